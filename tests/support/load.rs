//! Continuous load from loopback clients: keep-alive HTTP/1.1 over real rustls connections,
//! reconnecting now and then, counting every failure.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::tls_connect;

/// One keep-alive connection.
pub struct KeepAlive {
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    buffer: Vec<u8>,
}

impl KeepAlive {
    pub async fn connect(
        address: SocketAddr,
        server_name: &str,
        roots: rustls::RootCertStore,
    ) -> std::io::Result<Self> {
        let stream = tls_connect(address, server_name, roots, &[b"http/1.1"]).await?;
        Ok(KeepAlive {
            stream,
            buffer: Vec::new(),
        })
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let read = self.stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        self.buffer.extend_from_slice(&chunk[..read]);
        Ok(())
    }

    /// GET `path` on `host`; returns the status and body.
    pub async fn get(&mut self, host: &str, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        self.stream.write_all(request.as_bytes()).await?;
        let head_end = loop {
            if let Some(position) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break position + 4;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buffer[..head_end]).to_ascii_lowercase();
        self.buffer.drain(..head_end);
        let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let header = |name: &str| {
            head.lines()
                .find_map(|line| line.strip_prefix(&format!("{name}:")).map(|v| v.trim().to_owned()))
        };
        let body = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let mut body = Vec::new();
            loop {
                let line_end = loop {
                    if let Some(position) = self.buffer.windows(2).position(|w| w == b"\r\n") {
                        break position;
                    }
                    self.fill().await?;
                };
                let size = usize::from_str_radix(String::from_utf8_lossy(&self.buffer[..line_end]).trim(), 16)
                    .map_err(|_| std::io::Error::other("bad chunk size"))?;
                self.buffer.drain(..line_end + 2);
                while self.buffer.len() < size + 2 {
                    self.fill().await?;
                }
                body.extend_from_slice(&self.buffer[..size]);
                self.buffer.drain(..size + 2);
                if size == 0 {
                    break body;
                }
            }
        } else {
            let length: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            while self.buffer.len() < length {
                self.fill().await?;
            }
            self.buffer.drain(..length).collect()
        };
        Ok((status, body))
    }
}

/// Load running in the background until [`Load::finish`].
pub struct Load {
    stop: Arc<AtomicBool>,
    pub ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    /// `clients` connections, each sending GETs for `host` back to back and reconnecting every
    /// `requests_per_connection` requests.
    pub fn start(
        address: SocketAddr,
        host: &str,
        roots: rustls::RootCertStore,
        clients: usize,
        requests_per_connection: usize,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (stop_flag, ok_count, failure_list, host) = (stop.clone(), ok.clone(), failures.clone(), host.to_owned());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let mut tasks = Vec::new();
                for client in 0..clients {
                    let (stop, ok, failures, host, roots) = (
                        stop_flag.clone(),
                        ok_count.clone(),
                        failure_list.clone(),
                        host.clone(),
                        roots.clone(),
                    );
                    tasks.push(tokio::spawn(async move {
                        while !stop.load(Ordering::Relaxed) {
                            let mut connection = match KeepAlive::connect(address, &host, roots.clone()).await {
                                Ok(connection) => connection,
                                Err(error) => {
                                    failures
                                        .lock()
                                        .unwrap()
                                        .push(format!("client {client}: connect: {error}"));
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                    continue;
                                }
                            };
                            for _ in 0..requests_per_connection {
                                if stop.load(Ordering::Relaxed) {
                                    break;
                                }
                                match connection.get(&host, "/load").await {
                                    Ok((200, _)) => {
                                        ok.fetch_add(1, Ordering::Relaxed);
                                    }
                                    Ok((status, body)) => {
                                        failures.lock().unwrap().push(format!(
                                            "client {client}: status {status}: {}",
                                            String::from_utf8_lossy(&body)
                                        ));
                                    }
                                    Err(error) => {
                                        failures.lock().unwrap().push(format!("client {client}: {error}"));
                                        break;
                                    }
                                }
                            }
                        }
                    }));
                }
                for task in tasks {
                    let _ = task.await;
                }
            });
        });
        Load {
            stop,
            ok,
            failures,
            thread: Some(thread),
        }
    }

    /// Stops the load; returns (successful requests, failures).
    pub fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        (self.ok.load(Ordering::Relaxed), self.failures.lock().unwrap().clone())
    }
}
