//! Registry servers started by tests: Debian's `docker-registry` (distribution 2.8) and
//! `vmt-hub serve`, each on a free port of 127.0.0.1, killed on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server process, killed on drop.
pub struct Server {
    pub child: Child,
    pub port: u16,
    /// Where it keeps its data.
    pub root: PathBuf,
    pub kind: Kind,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Distribution,
    VmtServe,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_ready(port: u16) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if let Ok(r) = ureq::get(&format!("http://127.0.0.1:{port}/v2/")).call() {
            if r.status() == 200 {
                return;
            }
        }
        if let Err(ureq::Error::Status(401, _)) =
            ureq::get(&format!("http://127.0.0.1:{port}/v2/")).call()
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("server on port {port} did not come up");
}

/// Debian's docker-registry with a temporary config (and htpasswd auth if asked).
pub fn distribution(dir: &Path, htpasswd: Option<(&str, &str)>) -> Server {
    let bin = super::docker_registry().expect("callers check super::docker_registry()");
    let port = free_port();
    let root = dir.join("distribution");
    std::fs::create_dir_all(&root).unwrap();
    let auth = match htpasswd {
        Some((user, pass)) => {
            let hash = bcrypt::hash(pass, 5).unwrap();
            std::fs::write(root.join("htpasswd"), format!("{user}:{hash}\n")).unwrap();
            format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                root.join("htpasswd").display()
            )
        }
        None => String::new(),
    };
    let config = format!(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
        root.join("data").display()
    );
    std::fs::write(root.join("config.yml"), config).unwrap();
    let child = Command::new(bin)
        .arg("serve")
        .arg(root.join("config.yml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let s = Server {
        child,
        port,
        root,
        kind: Kind::Distribution,
    };
    wait_ready(port);
    s
}

/// `vmt-hub serve` on a fresh registry.
pub fn vmt_serve(dir: &Path, extra: &[&str]) -> Server {
    let root = dir.join("served");
    let (child, port) = super::spawn_serve(&root, extra);
    let s = Server {
        child,
        port,
        root,
        kind: Kind::VmtServe,
    };
    wait_ready(port);
    s
}

/// distribution (when installed: see `common::tool_available`) and `vmt-hub serve`.
pub fn servers(dir: &Path) -> Vec<Server> {
    let mut out = Vec::new();
    if super::docker_registry().is_some() {
        out.push(distribution(&dir.join("d"), None));
    }
    out.push(vmt_serve(&dir.join("v"), &[]));
    out
}
