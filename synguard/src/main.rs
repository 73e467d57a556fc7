//! The `synguard` binary: parse the command line, run the command, map errors to exit
//! codes (0 ok, 1 runtime failure, 2 bad usage or input) with messages that say what to do.

use std::process::ExitCode;

use clap::Parser as _;
use synguard::{
    cli::{AllowCmd, BlockCmd, Cli, Command, ConfigCmd},
    cmd::{State, allow, block, config, explain, status, top},
    config::Settings,
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
    let pin = cli.pin_dir.as_path();
    match cli.command {
        Command::Run(args) => synguard::cmd::run::run(cli.pin_dir, cli.state_dir, args).await,
        Command::Status(a) => status::status(&State::open(pin)?, a.json, &cli.state_dir),
        Command::Block(BlockCmd::List(a)) => block::block_list(&State::open(pin)?, a.json),
        Command::Block(BlockCmd::Add {
            cidr,
            duration,
            comment,
            force,
        }) => {
            // Validate the input before touching the state, so bad input changes nothing
            // even when there is no state to change.
            synguard::net::parse_cidr(&cidr)?;
            block::block_add(
                &mut State::open(pin)?,
                &block::BlockAdd {
                    cidr: &cidr,
                    duration: duration.as_deref(),
                    comment: &comment,
                    force,
                },
            )
        }
        Command::Block(BlockCmd::Del { cidr }) => {
            synguard::net::parse_cidr(&cidr)?;
            block::block_del(&mut State::open(pin)?, &cidr)
        }
        Command::Allow(AllowCmd::List(a)) => allow::allow_list(&State::open(pin)?, a.json),
        Command::Allow(AllowCmd::Add { cidr, comment }) => {
            synguard::net::parse_cidr(&cidr)?;
            allow::allow_add(&mut State::open(pin)?, &cidr, &comment)
        }
        Command::Allow(AllowCmd::Del { cidr }) => {
            synguard::net::parse_cidr(&cidr)?;
            allow::allow_del(&mut State::open(pin)?, &cidr)
        }
        Command::Config(ConfigCmd::Show(a)) => config::show(&State::open(pin)?, a.json),
        Command::Config(ConfigCmd::Set { key, value }) => {
            Settings::default()
                .set(&key, &value)
                .map_err(|e| error::usage(e.to_string()))?;
            config::set(&mut State::open(pin)?, &key, &value)
        }
        Command::Explain { addr, json } => {
            synguard::net::parse_addr(&addr)?;
            explain::explain(&State::open(pin)?, &addr, json)
        }
        Command::Top { interval } => {
            let every = crate_duration(&interval)?;
            top::check_interval(every)?;
            top::top(&State::open(pin)?, every)
        }
        Command::Report { since, out } => {
            let since = since.as_deref().map(crate_duration).transpose()?;
            synguard::cmd::report::report(&cli.state_dir, since, out.format, out.output.as_deref())
        }
        Command::Detach => synguard::cmd::detach::detach(pin),
        Command::Completions { shell } => synguard::cmd::completions::completions(shell),
        Command::Man { out_dir } => synguard::cmd::completions::man(out_dir.as_deref()),
        Command::Analyze { file, out, keys } => {
            synguard::cmd::analyze::analyze(&file, &keys.0, out.format, out.output.as_deref())
        }
    }
}

/// A human duration from the command line (`30s`, `10m`, `2h`), or a usage error.
fn crate_duration(s: &str) -> anyhow::Result<std::time::Duration> {
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(error::usage(format!(
            "the duration {s:?} is zero: give a positive one (e.g. 30s, 10m, 2h, 1d)"
        ))),
        Err(_) => Err(error::usage(format!(
            "not a duration: {s:?} (use e.g. 30s, 10m, 2h, 1d)"
        ))),
    }
}
