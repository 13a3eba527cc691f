//! One JSON line per request, written off the request path.
//!
//! Lines go through a bounded channel to a writer thread that batches them; when the channel is
//! full (the disk cannot keep up) lines are dropped and counted, never waited for. Entries carry
//! no query strings, cookies, tokens or header values.

use std::io::Write;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::SystemTime;

use serde::Serialize;

use crate::config::AccessLogTarget;

/// Lines buffered between the request path and the writer thread.
const QUEUE_LINES: usize = 64 * 1024;

/// One request, as logged.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    pub time: String,
    pub request_id: &'a str,
    pub application: Option<&'a str>,
    pub tenant: Option<&'a str>,
    pub user_id: Option<&'a str>,
    pub method: &'a str,
    /// Path only: the query is never logged (it can hold codes and tokens).
    pub path: &'a str,
    pub status: u16,
    pub bytes: usize,
    pub edge_ms: f64,
    pub upstream_ms: Option<f64>,
    pub tls_version: Option<&'a str>,
    pub sni: Option<&'a str>,
    pub client: Option<String>,
    pub rejection: Option<&'a str>,
}

pub struct AccessLog {
    sender: Option<SyncSender<Vec<u8>>>,
    dropped: prometheus::IntCounter,
}

impl AccessLog {
    pub fn open(target: &AccessLogTarget) -> std::io::Result<Self> {
        let dropped = prometheus::IntCounter::new(
            "vestibule_access_log_dropped_total",
            "Access log lines dropped because the writer could not keep up",
        )
        .expect("valid counter");
        let _ = crate::metrics::global().registry.register(Box::new(dropped.clone()));
        let writer: Box<dyn Write + Send> = match target {
            AccessLogTarget::Off => return Ok(AccessLog { sender: None, dropped }),
            AccessLogTarget::Stdout => Box::new(std::io::stdout()),
            AccessLogTarget::File(path) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?),
        };
        let (sender, receiver) = sync_channel(QUEUE_LINES);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(receiver, writer))?;
        Ok(AccessLog {
            sender: Some(sender),
            dropped,
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.sender.is_some()
    }

    pub fn record(&self, entry: &Entry<'_>) {
        let Some(sender) = &self.sender else { return };
        let mut line = Vec::with_capacity(384);
        if serde_json::to_writer(&mut line, entry).is_err() {
            return;
        }
        line.push(b'\n');
        match sender.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}

fn write_lines(receiver: Receiver<Vec<u8>>, writer: Box<dyn Write + Send>) {
    let mut writer = std::io::BufWriter::with_capacity(64 * 1024, writer);
    while let Ok(line) = receiver.recv() {
        let _ = writer.write_all(&line);
        // Drain whatever else is queued, then flush once.
        while let Ok(line) = receiver.try_recv() {
            let _ = writer.write_all(&line);
        }
        let _ = writer.flush();
    }
}

/// RFC 3339 UTC timestamp with milliseconds.
pub fn timestamp(time: SystemTime) -> String {
    let since_epoch = time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs() as i64;
    let (days, second_of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60,
        since_epoch.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(timestamp(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let time = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_456_123_456);
        assert_eq!(timestamp(time), "2026-11-23T17:48:43.456Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(timestamp(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn writes_json_lines_to_a_file() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("access.log");
        let log = AccessLog::open(&AccessLogTarget::File(path.clone())).unwrap();
        let entry = Entry {
            time: timestamp(SystemTime::now()),
            request_id: "r1",
            application: Some("portal"),
            tenant: Some("t1"),
            user_id: None,
            method: "GET",
            path: "/x",
            status: 200,
            bytes: 5,
            edge_ms: 0.1,
            upstream_ms: Some(1.0),
            tls_version: Some("TLSv1_3"),
            sni: Some("a.example"),
            client: None,
            rejection: None,
        };
        log.record(&entry);
        drop(log);
        for _ in 0..100 {
            if std::fs::read_to_string(&path).is_ok_and(|text| text.ends_with('\n')) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["request_id"], "r1");
        assert_eq!(line["status"], 200);
        assert_eq!(line["path"], "/x");
    }
}
