//! Host → tenant resolution with 100k tenants: every host form, plus the normalization that runs
//! before it on each request.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use vestibule::tenancy::host::{self, HostBuffer};
use vestibule::tenancy::{HostTable, HostTableBuilder, VanityZone};

const APPLICATIONS: usize = 10;
const TENANTS_PER_APPLICATION: usize = 10_000;

fn zone() -> VanityZone {
    VanityZone {
        apex_domain: "vestibule.io".into(),
        region: "us".into(),
        account: "acme".into(),
    }
}

/// 100k tenants over 10 applications; every fifth tenant has its own custom domain.
fn table() -> HostTable {
    let mut builder = HostTableBuilder::new(zone());
    for application in 0..APPLICATIONS {
        let path = format!("applications[{application}]");
        let index = builder.add_application(
            &path,
            &format!("app{application}"),
            Some(&format!("auth.app{application}.io")),
        );
        for tenant in 0..TENANTS_PER_APPLICATION {
            let custom = (tenant % 5 == 0).then(|| format!("login.customer{application}-{tenant}.com"));
            builder.add_tenant(
                index,
                &format!("{path}.tenants[{tenant}]"),
                &format!("tenant{tenant}"),
                custom.as_deref(),
            );
        }
    }
    builder.build().expect("valid table")
}

fn resolve(c: &mut Criterion) {
    let table = table();
    let cases = [
        ("tenant_custom_domain", "login.customer7-4095.com"),
        ("application_custom_domain", "auth.app7.io"),
        ("tenant_subdomain", "tenant4321.auth.app7.io"),
        ("application_vanity", "app7-acme.us.vestibule.io"),
        ("tenant_vanity", "tenant4321-app7-acme.us.vestibule.io"),
        ("unknown", "tenant4321-app99-acme.us.vestibule.io"),
    ];
    let mut group = c.benchmark_group("resolve_100k_tenants");
    for (name, host) in cases {
        assert!(name == "unknown" || table.resolve(host).is_some(), "{host}");
        group.bench_function(name, |b| b.iter(|| table.resolve(black_box(host))));
    }
    group.finish();

    let mut group = c.benchmark_group("normalize_then_resolve");
    for (name, raw) in [
        ("host_header_with_port", "Tenant4321.Auth.App7.io:443"),
        ("sni", "tenant4321-app7-acme.us.vestibule.io"),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut buffer: HostBuffer = [0; host::MAX_NAME_LENGTH + 2];
                let normalized = host::normalize(black_box(raw.as_bytes()), &mut buffer).expect("valid");
                black_box(table.resolve(normalized))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, resolve);
criterion_main!(benches);
