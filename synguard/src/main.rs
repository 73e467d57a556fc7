//! The `synguard` binary: parse the command line, run the command, map errors to exit
//! codes (0 ok, 1 runtime failure, 2 bad usage or input) with messages that say what to do.

use std::process::ExitCode;

use clap::Parser as _;
use synguard::{
    cli::{Cli, Command},
    error,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    let result = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(dispatch(cli)),
        Err(e) => Err(anyhow::anyhow!("starting the async runtime: {e}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(error::exit_code(&e) as u8)
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => synguard::daemon::run(cli.pin_dir, args).await,
    }
}
