//! A real `redis-server` (Debian package) on a free loopback port, without persistence.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    directory: PathBuf,
}

impl Redis {
    pub fn start(directory: &Path) -> Redis {
        let directory = directory.join("redis");
        std::fs::create_dir_all(&directory).unwrap();
        let mut redis = Redis {
            child: None,
            port: super::free_port(),
            directory,
        };
        redis.run();
        redis
    }

    /// (Re)starts the server on the same port, empty.
    pub fn run(&mut self) {
        self.stop();
        let log = self.directory.join("redis.log");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.directory)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (Debian package `redis-server`; run ./scripts/install-test-deps.sh)");
        self.child = Some(child);
        let port = self.port;
        let ready = super::eventually(Duration::from_secs(10), || ping(port));
        assert!(
            ready,
            "redis-server did not start:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) the server: connections stay open, nothing answers.
    pub fn freeze(&self, frozen: bool) {
        let child = self.child.as_ref().expect("running");
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `redis-cli` output for one command.
    pub fn cli(&self, arguments: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(arguments)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
