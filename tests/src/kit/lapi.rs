//! A real CrowdSec Local API for the fleet tests and the bench: the Debian package's
//! `crowdsec -no-cs` (the LAPI alone, no log processing, no Central API), in a network
//! namespace of its own, with its own config and SQLite database in a directory under
//! `target/` removed on drop. Servers reach it over a veth each; `cscli` runs in its
//! namespace against the same config.

use std::{
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use crate::kit::netns::{ChildGuard, Netns, unique, veth};

/// Where the LAPI listens in its namespace.
pub const PORT: u16 = 8080;

/// A directory under `target/`, removed on drop.
pub struct TargetDir {
    pub path: PathBuf,
}

impl TargetDir {
    pub fn new(tag: &str) -> Self {
        let bin = crate::kit::synguard_bin_path();
        // target/<profile>/synguard -> target/
        let target = bin
            .parent()
            .and_then(Path::parent)
            .map_or_else(std::env::temp_dir, Path::to_path_buf);
        let path = target.join("lapi").join(unique(tag));
        std::fs::create_dir_all(&path).expect("create the LAPI's directory");
        Self { path }
    }
}

impl Drop for TargetDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

pub struct Lapi {
    pub ns: Netns,
    pub dir: TargetDir,
    child: Option<ChildGuard>,
    links: u32,
}

/// Why the LAPI cannot run here, if it cannot (the package is missing).
pub fn missing() -> Option<String> {
    for tool in ["crowdsec", "cscli"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!(
                "`{tool}` is not installed (Debian package crowdsec; `cargo xtask test` \
                 installs it)"
            ));
        }
    }
    None
}

impl Lapi {
    /// Configure and start a LAPI; returns once it answers.
    pub fn start() -> Self {
        let ns = Netns::new("csl");
        let dir = TargetDir::new("lapi");
        let d = dir.path.display();
        std::fs::create_dir_all(dir.path.join("data")).expect("data dir");
        std::fs::create_dir_all(dir.path.join("hub")).expect("hub dir");
        std::fs::write(dir.path.join("simulation.yaml"), "simulation: false\n")
            .expect("simulation.yaml");
        std::fs::write(
            dir.path.join("config.yaml"),
            format!(
                "common:\n  daemonize: false\n  log_media: stdout\n  log_level: info\n\
                 config_paths:\n  config_dir: {d}/\n  data_dir: {d}/data/\n  \
                 simulation_path: {d}/simulation.yaml\n  hub_dir: {d}/hub/\n  \
                 index_path: {d}/hub/.index.json\n\
                 db_config:\n  type: sqlite\n  db_path: {d}/data/crowdsec.db\n  \
                 use_wal: true\n  flush:\n    max_items: 1000000\n    max_age: 7d\n\
                 api:\n  client:\n    credentials_path: {d}/cscli.yaml\n  server:\n    \
                 listen_uri: 0.0.0.0:{PORT}\n    profiles_path: /etc/crowdsec/profiles.yaml\n    \
                 trusted_ips:\n      - 127.0.0.1\n\
                 prometheus:\n  enabled: false\n"
            ),
        )
        .expect("config.yaml");
        let mut lapi = Self {
            ns,
            dir,
            child: None,
            links: 0,
        };
        lapi.ns.ip(&["link", "set", "lo", "up"]);
        // The machine cscli itself uses (decisions add/delete go through the API).
        let cscli = lapi.dir.path.join("cscli.yaml");
        lapi.ok(&[
            "machines",
            "add",
            "cscli",
            "--password",
            "cscli-password",
            "-f",
            cscli.to_str().expect("utf-8"),
            "--force",
        ]);
        std::fs::write(
            &cscli,
            format!("url: http://127.0.0.1:{PORT}/\nlogin: cscli\npassword: cscli-password\n"),
        )
        .expect("cscli credentials");
        lapi.restart();
        lapi
    }

    fn config(&self) -> PathBuf {
        self.dir.path.join("config.yaml")
    }

    /// Start the LAPI (again), and wait until it accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        let mut cmd = self.ns.command("crowdsec");
        cmd.arg("-c").arg(self.config()).arg("-no-cs");
        let log = self.dir.path.join("lapi.log");
        self.child = Some(ChildGuard::spawn_logged(cmd, log));
        let start = Instant::now();
        let addr: SocketAddr = format!("127.0.0.1:{PORT}").parse().expect("addr");
        loop {
            let up = self
                .ns
                .spawn(move || {
                    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                })
                .join()
                .expect("probe thread");
            if up {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the LAPI did not start:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stop it (SIGKILL: as abrupt as a crash or a lost network).
    pub fn stop(&mut self) {
        self.child = None;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path.join("lapi.log")).unwrap_or_default()
    }

    /// A link from `server` to the LAPI; returns the URL the server reaches it at. Link
    /// `i` is 192.0.2.(64 + 4i)/30: the server at .65 + 4i, the LAPI at .66 + 4i.
    pub fn link(&mut self, server: &Netns) -> String {
        let i = self.links;
        self.links += 1;
        let base = 64 + 4 * i;
        let (srv, lapi) = (
            format!("192.0.2.{}", base + 1),
            format!("192.0.2.{}", base + 2),
        );
        veth(
            server,
            "sgl",
            &format!("{srv}/30"),
            &self.ns,
            &format!("l{i}"),
            &format!("{lapi}/30"),
        );
        format!("http://{lapi}:{PORT}")
    }

    /// `cscli -c CONFIG ARGS` in the LAPI's namespace.
    pub fn cscli(&self, args: &[&str]) -> Output {
        let mut c: Command = self.ns.command("cscli");
        c.arg("-c").arg(self.config()).args(args);
        c.output().expect("run cscli")
    }

    /// The same, expecting success; returns stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cscli(args);
        assert!(
            out.status.success(),
            "cscli {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A bouncer key, written to a file; returns the file.
    pub fn bouncer(&self, name: &str) -> PathBuf {
        let key = self.ok(&["bouncers", "add", name, "-o", "raw"]);
        let path = self.dir.path.join(format!("{name}.key"));
        std::fs::write(&path, key.trim()).expect("key file");
        path
    }

    /// Machine credentials as `cscli machines add NAME --password P -f FILE` writes them.
    pub fn machine(&self, name: &str) -> PathBuf {
        let path = self.dir.path.join(format!("{name}.yaml"));
        self.ok(&[
            "machines",
            "add",
            name,
            "--password",
            &format!("{name}-password"),
            "-f",
            path.to_str().expect("utf-8"),
            "--force",
        ]);
        path
    }

    /// The alerts the LAPI holds, as `cscli alerts list -o json` prints them.
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        let text = self.ok(&["alerts", "list", "-o", "json", "-a"]);
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_default();
        v.as_array().cloned().unwrap_or_default()
    }
}
