//! Tenancy: which application and tenant a host name belongs to.
//!
//! Contract:
//! - [`HostTable::resolve`] takes an already-normalized host (see [`host::normalize`]) and answers
//!   in O(1) hash lookups, allocation-free, with a [`Route`] naming the application, the tenant
//!   (none for an application-level host) and the [`HostKind`] that matched.
//! - Precedence: tenant custom domain > application custom domain (app-level host, then
//!   `{tenant}.{custom_domain}`) > vanity (`{app}-{account}.{region}.{apex}` and
//!   `{tenant}-{app}-{account}.{region}.{apex}`).
//! - Every ambiguity is found when the table is built ([`HostTableBuilder::build`]) and reported
//!   with the key paths of both claimants, so a built table never has to break a tie at run time.
//! - Names are stored once: exact names in one map, tenant subdomain and tenant vanity names are
//!   parsed at lookup, so 100k tenants cost one small map entry each.

pub mod host;

use std::collections::HashMap;
use std::fmt;

type Map<K, V> = HashMap<K, V, ahash::RandomState>;

/// Index of an application in the snapshot's application list.
pub type ApplicationIndex = u32;
/// Index of a tenant in its application's tenant list.
pub type TenantIndex = u32;

/// How a host matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostKind {
    /// `login.customer.com`: a tenant's own domain.
    TenantCustomDomain,
    /// `auth.yourapp.io`: an application's custom domain, no tenant.
    ApplicationCustomDomain,
    /// `{tenant}.auth.yourapp.io`: a tenant under its application's custom domain.
    TenantSubdomain,
    /// `{app}-{account}.{region}.{apex}`: the application's vanity host, no tenant.
    ApplicationVanity,
    /// `{tenant}-{app}-{account}.{region}.{apex}`.
    TenantVanity,
}

impl HostKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HostKind::TenantCustomDomain => "tenant-custom-domain",
            HostKind::ApplicationCustomDomain => "application-custom-domain",
            HostKind::TenantSubdomain => "tenant-subdomain",
            HostKind::ApplicationVanity => "application-vanity",
            HostKind::TenantVanity => "tenant-vanity",
        }
    }

    /// Names of these kinds may receive on-demand certificates: they are tenants' own names.
    pub fn is_on_demand_eligible(self) -> bool {
        matches!(self, HostKind::TenantCustomDomain | HostKind::TenantSubdomain)
    }
}

impl fmt::Display for HostKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The result of resolving a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub application: ApplicationIndex,
    pub tenant: Option<TenantIndex>,
    pub kind: HostKind,
}

/// The platform's vanity zone: `{region}.{apex}` with the account suffix on the first label.
#[derive(Debug, Clone)]
pub struct VanityZone {
    pub apex_domain: Box<str>,
    pub region: Box<str>,
    pub account: Box<str>,
}

impl VanityZone {
    /// `{region}.{apex}`.
    pub fn zone(&self) -> String {
        format!("{}.{}", self.region, self.apex_domain)
    }

    pub fn application_host(&self, application: &str) -> String {
        format!("{application}-{}.{}.{}", self.account, self.region, self.apex_domain)
    }

    pub fn tenant_host(&self, tenant: &str, application: &str) -> String {
        format!(
            "{tenant}-{application}-{}.{}.{}",
            self.account, self.region, self.apex_domain
        )
    }
}

/// A naming conflict found while building the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// Key path of the entry that lost.
    pub path: String,
    pub message: String,
}

/// Immutable host → route table.
#[derive(Debug)]
pub struct HostTable {
    exact: Map<Box<str>, Route>,
    subdomain_parents: Map<Box<str>, ApplicationIndex>,
    applications_by_domain: Map<Box<str>, ApplicationIndex>,
    tenants_by_domain: Vec<Map<Box<str>, TenantIndex>>,
    /// `.{region}.{apex}`
    vanity_suffix: Box<str>,
    /// `-{account}`
    account_suffix: Box<str>,
}

impl HostTable {
    /// Resolves a normalized host name.
    pub fn resolve(&self, host: &str) -> Option<Route> {
        if let Some(route) = self.exact.get(host) {
            return Some(*route);
        }
        if let Some((label, parent)) = host.split_once('.')
            && let Some(&application) = self.subdomain_parents.get(parent)
            && let Some(&tenant) = self.tenants_by_domain[application as usize].get(label)
        {
            return Some(Route {
                application,
                tenant: Some(tenant),
                kind: HostKind::TenantSubdomain,
            });
        }
        self.resolve_tenant_vanity(host)
    }

    fn resolve_tenant_vanity(&self, host: &str) -> Option<Route> {
        let label = host.strip_suffix(&*self.vanity_suffix)?;
        if label.contains('.') {
            return None;
        }
        let tenant_and_application = label.strip_suffix(&*self.account_suffix)?;
        // `{tenant}-{app}`: both halves may contain hyphens, so try each split. The builder
        // rejected every configuration in which two splits could both match.
        for (position, _) in tenant_and_application.match_indices('-') {
            let (tenant_label, application_label) = (
                &tenant_and_application[..position],
                &tenant_and_application[position + 1..],
            );
            if let Some(&application) = self.applications_by_domain.get(application_label)
                && let Some(&tenant) = self.tenants_by_domain[application as usize].get(tenant_label)
            {
                return Some(Route {
                    application,
                    tenant: Some(tenant),
                    kind: HostKind::TenantVanity,
                });
            }
        }
        None
    }

    /// Every name the table answers for, with its route, in a stable order (for `vestibule check`).
    pub fn entries(&self, zone: &VanityZone) -> Vec<(String, Route)> {
        let mut entries: Vec<(String, Route)> = self
            .exact
            .iter()
            .map(|(host, route)| (host.to_string(), *route))
            .collect();
        for (parent, &application) in &self.subdomain_parents {
            for (label, &tenant) in &self.tenants_by_domain[application as usize] {
                entries.push((
                    format!("{label}.{parent}"),
                    Route {
                        application,
                        tenant: Some(tenant),
                        kind: HostKind::TenantSubdomain,
                    },
                ));
            }
        }
        for (application_label, &application) in &self.applications_by_domain {
            for (label, &tenant) in &self.tenants_by_domain[application as usize] {
                entries.push((
                    zone.tenant_host(label, application_label),
                    Route {
                        application,
                        tenant: Some(tenant),
                        kind: HostKind::TenantVanity,
                    },
                ));
            }
        }
        // An exact entry shadows a parsed form of the same name; list what `resolve` answers.
        entries.retain(|(host, route)| self.resolve(host) == Some(*route));
        entries.sort_by(|a, b| (a.1.application, a.1.tenant, &a.0).cmp(&(b.1.application, b.1.tenant, &b.0)));
        entries
    }

    /// The application custom domain a `{tenant}.{custom}` name hangs under, if any.
    pub fn is_subdomain_parent(&self, name: &str) -> bool {
        self.subdomain_parents.contains_key(name)
    }
}

struct ApplicationEntry {
    domain_name: Box<str>,
    path: String,
    tenants: Vec<(Box<str>, String)>,
}

/// Collects applications and tenants, then checks every naming rule at once.
pub struct HostTableBuilder {
    zone: VanityZone,
    exact: Map<Box<str>, (Route, String)>,
    subdomain_parents: Map<Box<str>, (ApplicationIndex, String)>,
    applications_by_domain: Map<Box<str>, ApplicationIndex>,
    applications: Vec<ApplicationEntry>,
    tenants_by_domain: Vec<Map<Box<str>, TenantIndex>>,
    tenant_custom_domains: Vec<(Box<str>, Route, String)>,
    conflicts: Vec<Conflict>,
}

impl HostTableBuilder {
    pub fn new(zone: VanityZone) -> Self {
        HostTableBuilder {
            zone,
            exact: Map::default(),
            subdomain_parents: Map::default(),
            applications_by_domain: Map::default(),
            applications: Vec::new(),
            tenants_by_domain: Vec::new(),
            tenant_custom_domains: Vec::new(),
            conflicts: Vec::new(),
        }
    }

    /// Registers an application; `path` is its key path (`applications[2]`).
    /// Names must already be canonical (see [`host::canonical_label`], [`host::canonical_domain`]).
    pub fn add_application(&mut self, path: &str, domain_name: &str, custom_domain: Option<&str>) -> ApplicationIndex {
        let index = self.applications.len() as ApplicationIndex;
        self.applications.push(ApplicationEntry {
            domain_name: domain_name.into(),
            path: path.to_owned(),
            tenants: Vec::new(),
        });
        self.tenants_by_domain.push(Map::default());
        if let Some(previous) = self.applications_by_domain.insert(domain_name.into(), index) {
            let other = &self.applications[previous as usize].path;
            self.conflict(
                format!("{path}.domain_name"),
                format!("`{domain_name}` is also the domain_name of {other}"),
            );
        }
        let vanity = self.zone.application_host(domain_name);
        self.check_vanity_label_length(&format!("{path}.domain_name"), domain_name, None);
        let route = Route {
            application: index,
            tenant: None,
            kind: HostKind::ApplicationVanity,
        };
        self.insert_exact(vanity, route, format!("{path}.domain_name"));
        if let Some(custom) = custom_domain {
            let key = format!("{path}.custom_domain");
            if self.check_outside_vanity_zone(&key, custom) {
                let route = Route {
                    application: index,
                    tenant: None,
                    kind: HostKind::ApplicationCustomDomain,
                };
                self.insert_exact(custom.to_owned(), route, key.clone());
                if let Some((previous, other)) = self.subdomain_parents.insert(custom.into(), (index, key.clone()))
                    && previous != index
                {
                    self.conflict(key, format!("`{custom}` is also the custom domain of {other}"));
                }
            }
        }
        index
    }

    /// Registers a tenant of `application`; `path` is its key path (`applications[2].tenants[5]`).
    pub fn add_tenant(
        &mut self,
        application: ApplicationIndex,
        path: &str,
        domain_name: &str,
        custom_domain: Option<&str>,
    ) -> TenantIndex {
        let entry = &mut self.applications[application as usize];
        let index = entry.tenants.len() as TenantIndex;
        entry.tenants.push((domain_name.into(), path.to_owned()));
        let application_domain = entry.domain_name.clone();
        if let Some(previous) = self.tenants_by_domain[application as usize].insert(domain_name.into(), index) {
            let other = self.applications[application as usize].tenants[previous as usize]
                .1
                .clone();
            self.conflict(
                format!("{path}.domain_name"),
                format!("`{domain_name}` is also the domain_name of {other}"),
            );
        }
        self.check_vanity_label_length(&format!("{path}.domain_name"), &application_domain, Some(domain_name));
        if let Some(custom) = custom_domain {
            let key = format!("{path}.custom_domain");
            if self.check_outside_vanity_zone(&key, custom) {
                let route = Route {
                    application,
                    tenant: Some(index),
                    kind: HostKind::TenantCustomDomain,
                };
                self.insert_exact(custom.to_owned(), route, key.clone());
                self.tenant_custom_domains.push((custom.into(), route, key));
            }
        }
        index
    }

    /// Checks cross-entry rules and freezes the table.
    pub fn build(mut self) -> Result<HostTable, Vec<Conflict>> {
        self.check_vanity_ambiguity();
        self.check_custom_domains_shadowing_subdomains();
        if !self.conflicts.is_empty() {
            return Err(self.conflicts);
        }
        Ok(HostTable {
            exact: self.exact.into_iter().map(|(host, (route, _))| (host, route)).collect(),
            subdomain_parents: self
                .subdomain_parents
                .into_iter()
                .map(|(host, (application, _))| (host, application))
                .collect(),
            applications_by_domain: self.applications_by_domain,
            tenants_by_domain: self.tenants_by_domain,
            vanity_suffix: format!(".{}", self.zone.zone()).into(),
            account_suffix: format!("-{}", self.zone.account).into(),
        })
    }

    fn conflict(&mut self, path: String, message: String) {
        self.conflicts.push(Conflict { path, message });
    }

    fn insert_exact(&mut self, host: String, route: Route, path: String) {
        match self.exact.get(host.as_str()) {
            Some((_, other)) => {
                let message = format!("`{host}` is also claimed by {other}");
                self.conflict(path, message);
            }
            None => {
                self.exact.insert(host.into(), (route, path));
            }
        }
    }

    fn check_outside_vanity_zone(&mut self, path: &str, domain: &str) -> bool {
        let zone = self.zone.zone();
        if domain == zone || domain.ends_with(&format!(".{zone}")) {
            self.conflict(
                path.to_owned(),
                format!("`{domain}` is inside the platform's vanity zone `{zone}`; use the vanity names instead"),
            );
            return false;
        }
        true
    }

    fn check_vanity_label_length(&mut self, path: &str, application: &str, tenant: Option<&str>) {
        let label_length = tenant.map_or(0, |t| t.len() + 1) + application.len() + 1 + self.zone.account.len();
        if label_length > host::MAX_LABEL_LENGTH {
            self.conflict(
                path.to_owned(),
                format!(
                    "the vanity host label would be {label_length} characters; DNS allows {}",
                    host::MAX_LABEL_LENGTH
                ),
            );
        }
    }

    /// `{tenant}-{app}` splits must be unique: with applications `baz` and `bar-baz`, the label
    /// `foo-bar-baz` could be tenant `foo-bar` of `baz` or tenant `foo` of `bar-baz`.
    fn check_vanity_ambiguity(&mut self) {
        let mut found = Vec::new();
        for longer in &self.applications {
            for (position, _) in longer.domain_name.match_indices('-') {
                let prefix = &longer.domain_name[..position];
                let suffix = &longer.domain_name[position + 1..];
                let Some(&shorter) = self.applications_by_domain.get(suffix) else {
                    continue;
                };
                let shorter_entry = &self.applications[shorter as usize];
                let shorter_tenants = &self.tenants_by_domain[shorter as usize];
                // Tenant `prefix` of `suffix` has the same vanity host as application `longer`.
                if let Some(&tenant) = shorter_tenants.get(prefix) {
                    found.push(Conflict {
                        path: format!("{}.domain_name", shorter_entry.tenants[tenant as usize].1),
                        message: format!(
                            "tenant vanity host `{}` is the application vanity host of {}",
                            self.zone.tenant_host(prefix, suffix),
                            longer.path
                        ),
                    });
                }
                // Tenant `t` of `longer` and tenant `t-prefix` of `suffix` share a vanity host.
                for (tenant_label, tenant_path) in &longer.tenants {
                    let twin = format!("{tenant_label}-{prefix}");
                    if let Some(&other) = shorter_tenants.get(twin.as_str()) {
                        found.push(Conflict {
                            path: format!("{tenant_path}.domain_name"),
                            message: format!(
                                "tenant vanity host `{}` is also the vanity host of {}",
                                self.zone.tenant_host(tenant_label, &longer.domain_name),
                                shorter_entry.tenants[other as usize].1
                            ),
                        });
                    }
                }
            }
        }
        self.conflicts.extend(found);
    }

    /// A tenant custom domain that equals `{other-tenant}.{app custom domain}` would silently take
    /// that other tenant's host.
    fn check_custom_domains_shadowing_subdomains(&mut self) {
        let mut found = Vec::new();
        for (custom, route, path) in &self.tenant_custom_domains {
            let Some((label, parent)) = custom.split_once('.') else {
                continue;
            };
            let Some((application, _)) = self.subdomain_parents.get(parent) else {
                continue;
            };
            let Some(&tenant) = self.tenants_by_domain[*application as usize].get(label) else {
                continue;
            };
            if (*application, Some(tenant)) != (route.application, route.tenant) {
                let owner = &self.applications[*application as usize].tenants[tenant as usize].1;
                found.push(Conflict {
                    path: path.clone(),
                    message: format!("`{custom}` is the subdomain host of {owner}"),
                });
            }
        }
        self.conflicts.extend(found);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> VanityZone {
        VanityZone {
            apex_domain: "vestibule.test".into(),
            region: "us".into(),
            account: "acme".into(),
        }
    }

    fn table() -> HostTable {
        let mut builder = HostTableBuilder::new(zone());
        let portal = builder.add_application("applications[0]", "portal", Some("auth.portal.io"));
        builder.add_tenant(portal, "applications[0].tenants[0]", "globex", Some("login.globex.com"));
        builder.add_tenant(portal, "applications[0].tenants[1]", "initech", None);
        builder.add_tenant(portal, "applications[0].tenants[2]", "big-co", None);
        let admin = builder.add_application("applications[1]", "admin-app", None);
        builder.add_tenant(admin, "applications[1].tenants[0]", "globex", None);
        builder.build().expect("valid table")
    }

    fn route(application: u32, tenant: Option<u32>, kind: HostKind) -> Option<Route> {
        Some(Route {
            application,
            tenant,
            kind,
        })
    }

    #[test]
    fn resolves_every_host_form() {
        let table = table();
        assert_eq!(
            table.resolve("login.globex.com"),
            route(0, Some(0), HostKind::TenantCustomDomain)
        );
        assert_eq!(
            table.resolve("auth.portal.io"),
            route(0, None, HostKind::ApplicationCustomDomain)
        );
        assert_eq!(
            table.resolve("initech.auth.portal.io"),
            route(0, Some(1), HostKind::TenantSubdomain)
        );
        assert_eq!(
            table.resolve("portal-acme.us.vestibule.test"),
            route(0, None, HostKind::ApplicationVanity)
        );
        assert_eq!(
            table.resolve("initech-portal-acme.us.vestibule.test"),
            route(0, Some(1), HostKind::TenantVanity)
        );
        assert_eq!(
            table.resolve("big-co-portal-acme.us.vestibule.test"),
            route(0, Some(2), HostKind::TenantVanity)
        );
        assert_eq!(
            table.resolve("globex-admin-app-acme.us.vestibule.test"),
            route(1, Some(0), HostKind::TenantVanity)
        );
        assert_eq!(
            table.resolve("admin-app-acme.us.vestibule.test"),
            route(1, None, HostKind::ApplicationVanity)
        );
    }

    #[test]
    fn unknown_hosts_do_not_resolve() {
        let table = table();
        for host in [
            "nobody.auth.portal.io",
            "x.initech.auth.portal.io",
            "nobody-portal-acme.us.vestibule.test",
            "initech-portal-other.us.vestibule.test",
            "initech-portal-acme.eu.vestibule.test",
            "initech-portal-acme.us.vestibule.test.evil.com",
            "a.initech-portal-acme.us.vestibule.test",
            "globex-portal-acme-acme.us.vestibule.test",
            "-acme.us.vestibule.test",
            "us.vestibule.test",
            "globex.com",
        ] {
            assert_eq!(table.resolve(host), None, "{host}");
        }
    }

    #[test]
    fn tenant_custom_domain_takes_precedence_over_subdomain_form() {
        let mut builder = HostTableBuilder::new(zone());
        let portal = builder.add_application("applications[0]", "portal", Some("auth.portal.io"));
        builder.add_tenant(
            portal,
            "applications[0].tenants[0]",
            "globex",
            Some("globex.auth.portal.io"),
        );
        let table = builder.build().unwrap();
        assert_eq!(
            table.resolve("globex.auth.portal.io"),
            route(0, Some(0), HostKind::TenantCustomDomain)
        );
    }

    #[test]
    fn duplicate_names_are_reported_with_both_paths() {
        let mut builder = HostTableBuilder::new(zone());
        let a = builder.add_application("applications[0]", "portal", Some("auth.portal.io"));
        builder.add_tenant(a, "applications[0].tenants[0]", "globex", Some("login.globex.com"));
        builder.add_tenant(a, "applications[0].tenants[1]", "globex", Some("login.globex.com"));
        let b = builder.add_application("applications[1]", "portal", Some("auth.portal.io"));
        builder.add_tenant(b, "applications[1].tenants[0]", "hooli", Some("auth.portal.io"));
        let conflicts = builder.build().unwrap_err();
        let paths: Vec<&str> = conflicts.iter().map(|c| c.path.as_str()).collect();
        assert!(
            paths.contains(&"applications[0].tenants[1].domain_name"),
            "{conflicts:?}"
        );
        assert!(
            paths.contains(&"applications[0].tenants[1].custom_domain"),
            "{conflicts:?}"
        );
        assert!(paths.contains(&"applications[1].domain_name"), "{conflicts:?}");
        assert!(paths.contains(&"applications[1].custom_domain"), "{conflicts:?}");
        assert!(
            paths.contains(&"applications[1].tenants[0].custom_domain"),
            "{conflicts:?}"
        );
        let message = &conflicts
            .iter()
            .find(|c| c.path == "applications[0].tenants[1].custom_domain")
            .unwrap()
            .message;
        assert!(
            message.contains("applications[0].tenants[0].custom_domain"),
            "{message}"
        );
    }

    #[test]
    fn ambiguous_vanity_splits_are_rejected() {
        let mut builder = HostTableBuilder::new(zone());
        let baz = builder.add_application("applications[0]", "baz", None);
        builder.add_tenant(baz, "applications[0].tenants[0]", "foo-bar", None);
        builder.add_tenant(baz, "applications[0].tenants[1]", "bar", None);
        let bar_baz = builder.add_application("applications[1]", "bar-baz", None);
        builder.add_tenant(bar_baz, "applications[1].tenants[0]", "foo", None);
        let conflicts = builder.build().unwrap_err();
        assert_eq!(conflicts.len(), 2, "{conflicts:?}");
        assert!(
            conflicts
                .iter()
                .any(|c| c.path == "applications[1].tenants[0].domain_name")
        );
        assert!(
            conflicts
                .iter()
                .any(|c| c.path == "applications[0].tenants[1].domain_name")
        );
    }

    #[test]
    fn custom_domains_inside_the_vanity_zone_are_rejected() {
        let mut builder = HostTableBuilder::new(zone());
        let a = builder.add_application("applications[0]", "portal", Some("us.vestibule.test"));
        builder.add_tenant(
            a,
            "applications[0].tenants[0]",
            "globex",
            Some("x-portal-acme.us.vestibule.test"),
        );
        let conflicts = builder.build().unwrap_err();
        assert_eq!(conflicts.len(), 2, "{conflicts:?}");
    }

    #[test]
    fn custom_domain_may_not_take_another_tenants_subdomain() {
        let mut builder = HostTableBuilder::new(zone());
        let a = builder.add_application("applications[0]", "portal", Some("auth.portal.io"));
        builder.add_tenant(a, "applications[0].tenants[0]", "globex", None);
        builder.add_tenant(a, "applications[0].tenants[1]", "hooli", Some("globex.auth.portal.io"));
        let conflicts = builder.build().unwrap_err();
        assert_eq!(conflicts[0].path, "applications[0].tenants[1].custom_domain");
    }

    #[test]
    fn overlong_vanity_labels_are_rejected() {
        let mut builder = HostTableBuilder::new(zone());
        let a = builder.add_application("applications[0]", "portal", None);
        builder.add_tenant(a, "applications[0].tenants[0]", &"t".repeat(52), None);
        assert!(builder.build().is_err());
    }

    #[test]
    fn entries_list_every_name() {
        let table = table();
        let entries = table.entries(&zone());
        let names: Vec<&str> = entries.iter().map(|(host, _)| host.as_str()).collect();
        for expected in [
            "login.globex.com",
            "auth.portal.io",
            "globex.auth.portal.io",
            "portal-acme.us.vestibule.test",
            "globex-portal-acme.us.vestibule.test",
            "globex-admin-app-acme.us.vestibule.test",
        ] {
            assert!(names.contains(&expected), "{expected} missing from {names:?}");
        }
        for (host, route) in &entries {
            assert_eq!(table.resolve(host), Some(*route), "{host}");
        }
    }
}
