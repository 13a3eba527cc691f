//! The manager's rules with a stand-in issuer (the real CA is exercised by tests/acme.rs).

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::config::{self, Source};

/// Issues self-signed certificates after a delay, counting calls; can be told to fail.
struct FakeIssuer {
    calls: AtomicUsize,
    delay: Duration,
    fail: AtomicBool,
    lifetime: Duration,
}

#[async_trait]
impl Issuer for FakeIssuer {
    async fn issue(&self, name: &str) -> Result<issuer::Issued, IssueError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        if self.fail.load(Ordering::SeqCst) {
            return Err(IssueError::Server("CA down".into()));
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        let now = time_now();
        params.not_before = now;
        params.not_after = now + self.lifetime;
        let certificate = params.self_signed(&key).unwrap();
        Ok(issuer::Issued {
            stored: StoredCertificate {
                chain_pem: certificate.pem(),
                key_pem: key.serialize_pem(),
            },
        })
    }

    async fn suggested_renewal(&self, _chain_der: &[u8]) -> Option<SystemTime> {
        None
    }
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn snapshot(storage: &std::path::Path, extra_acme: &str) -> Arc<Snapshot> {
    let text = format!(
        r#"
[listeners]
https = "127.0.0.1:0"
[platform]
apex_domain = "edge.test"
region = "us"
account = "acct"
[acme]
directory_url = "https://127.0.0.1:14000/dir"
storage = "{}"
failure_backoff_initial_seconds = 60
{extra_acme}
[[applications]]
id = "portal"
domain_name = "portal"
production_validations = false
custom_domain = "auth.portal.test"
upstream = "http://127.0.0.1:3000"
[[applications.tenants]]
id = "tnt_acme"
domain_name = "acme"
custom_domain = "login.acme.test"
"#,
        storage.display()
    );
    Arc::new(config::parse(&text, &Source::Embedded).expect("valid"))
}

struct Harness {
    _directory: tempfile::TempDir,
    manager: Arc<Manager>,
    issuer: Arc<FakeIssuer>,
    certificates: Arc<CertificateStore>,
    storage: Arc<FileStorage>,
}

fn harness(extra_acme: &str, lifetime: Duration) -> Harness {
    harness_with_delay(extra_acme, lifetime, Duration::from_millis(50))
}

fn harness_with_delay(extra_acme: &str, lifetime: Duration, delay: Duration) -> Harness {
    let directory = tempfile::tempdir().unwrap();
    let snapshot = snapshot(directory.path(), extra_acme);
    let settings = snapshot.acme.clone().unwrap();
    let certificates = Arc::new(CertificateStore::new(&[], None));
    let storage = Arc::new(FileStorage::new(settings.storage.clone()));
    let issuer = Arc::new(FakeIssuer {
        calls: AtomicUsize::new(0),
        delay,
        fail: AtomicBool::new(false),
        lifetime,
    });
    let manager = Manager::new(
        settings,
        snapshot,
        certificates.clone(),
        storage.clone(),
        issuer.clone(),
        Arc::new(Challenges::default()),
    );
    Harness {
        _directory: directory,
        manager,
        issuer,
        certificates,
        storage,
    }
}

const DAY: Duration = Duration::from_secs(86_400);

#[tokio::test]
async fn concurrent_handshakes_share_one_order() {
    let h = harness("", 90 * DAY);
    let waits: Vec<_> = (0..20)
        .map(|_| {
            let manager = h.manager.clone();
            tokio::spawn(async move { manager.obtain("login.acme.test").await })
        })
        .collect();
    for wait in waits {
        assert_eq!(wait.await.unwrap(), Ok(()));
    }
    assert_eq!(h.issuer.calls.load(Ordering::SeqCst), 1);
    assert!(h.certificates.lookup("login.acme.test").is_some());
    assert!(
        h.storage.load_certificate("login.acme.test").await.unwrap().is_some(),
        "stored before served"
    );
}

#[tokio::test]
async fn the_gate_refuses_everything_but_tenant_names_without_any_order() {
    let h = harness("", 90 * DAY);
    for name in [
        "unknown.example",
        "portal-acct.us.edge.test",
        "acme-portal-acct.us.edge.test",
        "auth.portal.test",
    ] {
        assert_eq!(h.manager.obtain(name).await, Err(OnDemandError::NotAllowed), "{name}");
    }
    assert_eq!(h.issuer.calls.load(Ordering::SeqCst), 0);
    // A tenant under the application's custom domain is eligible.
    assert_eq!(h.manager.obtain("acme.auth.portal.test").await, Ok(()));
}

#[tokio::test]
async fn failures_back_off_per_name() {
    let h = harness("", 90 * DAY);
    h.issuer.fail.store(true, Ordering::SeqCst);
    assert!(matches!(
        h.manager.obtain("login.acme.test").await,
        Err(OnDemandError::Unavailable(_))
    ));
    assert!(matches!(
        h.manager.obtain("login.acme.test").await,
        Err(OnDemandError::Unavailable(_))
    ));
    assert_eq!(
        h.issuer.calls.load(Ordering::SeqCst),
        1,
        "no retry storm while backing off"
    );
    // Another name is not affected.
    h.issuer.fail.store(false, Ordering::SeqCst);
    assert_eq!(h.manager.obtain("acme.auth.portal.test").await, Ok(()));
}

#[tokio::test]
async fn a_ca_that_never_answers_fails_the_order_at_its_deadline() {
    let h = harness_with_delay("order_timeout_seconds = 1", 90 * DAY, Duration::from_secs(3600));
    let started = std::time::Instant::now();
    let result = h.manager.obtain("login.acme.test").await;
    assert!(
        matches!(&result, Err(OnDemandError::Unavailable(reason)) if reason.contains("did not finish")),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    // The name backs off instead of joining a stuck order forever.
    assert!(h.manager.backing_off("login.acme.test"));
    assert!(
        h.storage.lock("login.acme.test", LOCK_TTL).await.unwrap().is_some(),
        "the issuance lock was released"
    );
}

#[tokio::test]
async fn orders_per_minute_are_limited() {
    let h = harness("orders_per_minute = 1", 90 * DAY);
    assert_eq!(h.manager.obtain("login.acme.test").await, Ok(()));
    assert!(matches!(
        h.manager.obtain("acme.auth.portal.test").await,
        Err(OnDemandError::Unavailable(_))
    ));
    assert_eq!(h.issuer.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn stored_certificates_are_served_again_without_an_order() {
    let h = harness("", 90 * DAY);
    h.manager.obtain("login.acme.test").await.unwrap();
    let again = harness("", 90 * DAY);
    let stored = h.storage.load_all().unwrap();
    assert_eq!(again.manager.load_stored(stored), 1);
    assert!(again.certificates.lookup("login.acme.test").is_some());
    assert_eq!(again.issuer.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn renewal_is_due_when_a_third_of_the_lifetime_is_left() {
    let h = harness("", 90 * DAY);
    h.manager.obtain("login.acme.test").await.unwrap();
    let fresh = h.certificates.managed("login.acme.test").unwrap();
    assert!(!h.manager.renewal_due("login.acme.test", &fresh).await);
    let short = harness("", Duration::from_secs(30));
    short.manager.obtain("login.acme.test").await.unwrap();
    let current = short.certificates.managed("login.acme.test").unwrap();
    assert!(!short.manager.renewal_due("login.acme.test", &current).await);
    tokio::time::sleep(Duration::from_millis(21_000)).await;
    assert!(short.manager.renewal_due("login.acme.test", &current).await);
    // Renewal replaces the certificate with a newer one.
    let mut flight = short.manager.start_or_join("login.acme.test", Some(current.clone()));
    let result = flight.wait_for(Option::is_some).await.unwrap().clone();
    assert_eq!(result, Some(Ok(())));
    assert!(short.certificates.managed("login.acme.test").unwrap().not_after > current.not_after);
}
