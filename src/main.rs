//! The `vestibule` command.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::server::Server;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;

use vestibule::acme;
use vestibule::auth::AuthService;
use vestibule::config::{self, ListenerSettings, Snapshot, Source};
use vestibule::ops::access_log::AccessLog;
use vestibule::ops::admin::Admin;
use vestibule::ops::shutdown::DrainOnTerminate;
use vestibule::ops::supervisor::{ReloadObserver, Supervisor};
use vestibule::proxy::state::{Http01Responder, Runtime, Shared};
use vestibule::proxy::{ClientLimits, Edge, EdgeApp};
use vestibule::tenancy::HostKind;
use vestibule::tls::{self, CertificateStore, gate::Gate};

#[derive(Parser)]
#[command(name = "vestibule", version, about = "Multi-tenant auth edge")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default command).
    Run(RunArgs),
    /// Validate a configuration and print the host table; lists every problem and exits non-zero.
    Check {
        /// Configuration file; the embedded default when absent.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Make a local CA and a certificate for a configuration's hosts (default: certs/dev).
    DevCerts {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long, default_value = "certs/dev")]
        dir: PathBuf,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// A demo upstream that echoes each request's method, path and headers as JSON.
    Echo {
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: SocketAddr,
    },
}

#[derive(Args, Default)]
struct RunArgs {
    /// Configuration file; the embedded default (conf/vestibule.toml) when absent.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Write the bound listener addresses here as JSON (useful with port 0).
    #[arg(long)]
    ports_file: Option<PathBuf>,
    /// Take over the listening sockets of a running instance (pingora graceful upgrade).
    #[arg(long, short)]
    upgrade: bool,
}

/// mimalloc: per-request allocation is a measured share of the proxy's CPU time (glibc malloc
/// took ~15% of the keep-alive profile; see benches/README.md).
/// Build with `--features system-allocator` for heap profilers (valgrind massif, dhat) that
/// only see the system allocator.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// pingora's last pause after the listeners close, and its runtime shutdown wait.
const PINGORA_FINAL_GRACE_SECONDS: u64 = 1;

fn source(config: Option<PathBuf>) -> Source {
    config.map_or(Source::Embedded, Source::File)
}

fn main() -> anyhow::Result<()> {
    tls::install_crypto_provider();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run(RunArgs::default())) {
        Command::Run(args) => run(args),
        Command::Check { config } => check(&source(config)),
        Command::DevCerts { config, dir, force } => dev_certs(&source(config), &dir, force),
        Command::Echo { listen } => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(vestibule::ops::echo::run(listen))?;
            Ok(())
        }
    }
}

fn load_or_report(source: &Source) -> anyhow::Result<Snapshot> {
    match config::load(source) {
        Ok(snapshot) => Ok(snapshot),
        Err(error) => {
            let problems = error.problems();
            eprintln!("{source}: {} problem(s)", problems.len());
            for problem in problems {
                eprintln!("  {problem}");
            }
            bail!("the configuration is not valid")
        }
    }
}

fn check(source: &Source) -> anyhow::Result<()> {
    let snapshot = load_or_report(source)?;
    println!("{source} is valid (fingerprint {})", snapshot.fingerprint);
    println!("{:<55} {:<20} {:<20} kind", "host", "application", "tenant");
    for (host, route) in snapshot.hosts.entries(&snapshot.zone) {
        let application = snapshot.application(route.application);
        let tenant = route
            .tenant
            .map_or("-", |tenant| &application.tenants[tenant as usize].id);
        println!("{host:<55} {:<20} {tenant:<20} {}", application.id, route.kind);
    }
    Ok(())
}

/// Names a development certificate must cover for `snapshot`.
fn development_names(snapshot: &Snapshot) -> Vec<String> {
    let mut names = vec![format!("*.{}", snapshot.zone.zone())];
    for application in &snapshot.applications {
        if let Some(custom) = &application.custom_domain {
            names.push(custom.to_string());
            names.push(format!("*.{custom}"));
        }
    }
    for (host, route) in snapshot.hosts.entries(&snapshot.zone) {
        if route.kind == HostKind::TenantCustomDomain {
            names.push(host);
        }
    }
    names.sort();
    names.dedup();
    names
}

fn dev_certs(source: &Source, directory: &Path, force: bool) -> anyhow::Result<()> {
    // The certificate files may not exist yet: validate everything but them.
    let text = source.read()?;
    let names = match config::parse(&text, source) {
        Ok(snapshot) => development_names(&snapshot),
        Err(_) => {
            let without_tls = strip_tls_certificates(&text)?;
            development_names(&load_text(&without_tls, source)?)
        }
    };
    let generated = tls::dev::generate(directory, &names, force)?;
    println!("development CA:          {}", generated.ca_certificate.display());
    println!(
        "certificate (chain+key): {} {}",
        generated.certificate.display(),
        generated.key.display()
    );
    println!("names: {}", names.join(", "));
    Ok(())
}

fn strip_tls_certificates(text: &str) -> anyhow::Result<String> {
    let mut table: toml::Table = text.parse().context("the configuration is not valid TOML")?;
    if let Some(toml::Value::Table(tls)) = table.get_mut("tls") {
        tls.remove("certificates");
    }
    Ok(toml::to_string(&table)?)
}

fn load_text(text: &str, source: &Source) -> anyhow::Result<Snapshot> {
    config::parse(text, source).map_err(|error| anyhow::anyhow!("{error}"))
}

/// Replaces port 0 with a free port, so the addresses can be reported and probed.
fn reserve(address: SocketAddr) -> anyhow::Result<SocketAddr> {
    if address.port() != 0 {
        return Ok(address);
    }
    let listener = std::net::TcpListener::bind(address).with_context(|| format!("cannot bind {address}"))?;
    Ok(listener.local_addr()?)
}

fn init_logging(filter: &str) {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| {
        // pingora logs each refused handshake at error level; the gate counts and logs those itself.
        // rustls warns about what a client sent (an IP address as SNI, say) on every connection,
        // which would let any client fill the log.
        format!("{filter},pingora_core::services::listening=off,pingora_core::protocols::tls=warn,rustls=error")
    });
    let _ = tracing_log::LogTracer::init();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // Colours only for a terminal; log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let source = source(args.config);
    let snapshot = load_or_report(&source)?;
    init_logging(&snapshot.observability.log_level);

    let listeners = &snapshot.listeners;
    let bound = ListenerSettings {
        https: reserve(listeners.https)?,
        http: listeners.http.map(reserve).transpose()?,
        admin: listeners.admin.map(reserve).transpose()?,
    };
    if let Some(path) = &args.ports_file {
        let ports = serde_json::json!({
            "https": bound.https.to_string(),
            "http": bound.http.map(|a| a.to_string()),
            "admin": bound.admin.map(|a| a.to_string()),
        });
        std::fs::write(path, ports.to_string()).with_context(|| format!("cannot write {}", path.display()))?;
    }

    let server_settings = &snapshot.server;
    let threads = match server_settings.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        threads => threads,
    };
    let conf = ServerConf {
        threads,
        // The drain happens before pingora's own shutdown (see ops::shutdown); this short pause
        // only lets a request that raced the listener close finish.
        grace_period_seconds: Some(PINGORA_FINAL_GRACE_SECONDS),
        graceful_shutdown_timeout_seconds: Some(PINGORA_FINAL_GRACE_SECONDS),
        work_stealing: server_settings.work_stealing,
        pid_file: server_settings.pid_file.display().to_string(),
        upgrade_sock: server_settings.upgrade_socket.display().to_string(),
        ..ServerConf::default()
    };
    let options = Opt {
        upgrade: args.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(options, conf);
    server.bootstrap();

    let snapshot = Arc::new(snapshot);
    let certificates = Arc::new(CertificateStore::new(
        &snapshot.tls.certificates,
        snapshot.tls.default_server_name.as_deref(),
    ));
    let auth = Arc::new(AuthService::new(&snapshot.assertion)?);
    let access_log = AccessLog::open(&snapshot.observability.access_log).context("cannot open the access log")?;
    let acme = match &snapshot.acme {
        Some(settings) => Some(
            acme::Manager::start(settings.clone(), snapshot.clone(), certificates.clone())
                .context("cannot read the ACME storage")?,
        ),
        None => None,
    };
    let on_demand = acme.clone().map(|manager| manager as Arc<dyn tls::OnDemand>);
    let http01 = acme.clone().map(|manager| manager as Arc<dyn Http01Responder>);
    let gate = Arc::new(Gate::new(
        certificates.clone(),
        on_demand,
        snapshot.tls.client_hello_timeout,
    ));
    let runtime = Runtime::build(snapshot.clone(), &auth);
    let shared = Arc::new(Shared::new(
        runtime,
        certificates.clone(),
        auth.clone(),
        access_log,
        http01,
        bound.https.port(),
    ));

    let mut proxy = Service::new(
        "edge".to_owned(),
        EdgeApp::new(Edge::new(shared.clone(), ClientLimits::new(&snapshot.server))),
    );
    // No socket buffers by default: rustls buffers records itself and writes each flight in one
    // vectored write; pingora's defaults (64 KiB read, 1,460 bytes write) cost that much memory
    // on every idle connection (see benches/README.md).
    let buffers = L4BufferSettings::new(snapshot.tls.read_buffer_bytes, 0);
    proxy.add_listener(
        ListenerConfig::tcp(bound.https.to_string())
            .tls(tls::listener_settings(certificates))
            .l4_buffer(buffers),
    );
    if let Some(http) = bound.http {
        proxy.add_tcp(&http.to_string());
    }
    proxy.endpoints().set_pre_tls_callback(gate.clone());
    server.add_service(proxy);

    if let Some(admin_address) = bound.admin {
        let mut admin = Service::new("admin".to_owned(), Admin::new(shared.clone()));
        admin.add_tcp(&admin_address.to_string());
        server.add_service(admin);
    }
    let mut observers: Vec<Arc<dyn ReloadObserver>> = vec![auth];
    if let Some(manager) = acme {
        observers.push(manager);
    }
    let shutdown = DrainOnTerminate::new(
        shared.clone(),
        snapshot.server.grace_period,
        snapshot.server.graceful_shutdown_timeout,
    );
    let supervisor = Supervisor::new(shared, source, gate, bound, observers);
    server.add_service(background_service("supervisor", supervisor));
    server.run(pingora_core::server::RunArgs {
        shutdown_signal: Box::new(shutdown),
    });
    Ok(())
}
