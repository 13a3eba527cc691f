//! URLs that may carry the `{tenant_domain}` token.
//!
//! The token may appear at most once, and only as the whole or the prefix of the left-most host
//! label: `https://{tenant_domain}.auth.example.com/x` or
//! `https://{tenant_domain}-app-acct.us.idp.example/authorize`. Anywhere else (path, query,
//! middle of a label, twice, any other `{…}`) the URL is a configuration error, so a rendered URL
//! can only ever differ from its template in that one label.

use std::fmt;

use super::Problems;
use crate::tenancy::host::is_loopback_name;

/// The only placeholder configuration URLs may use.
pub const TENANT_DOMAIN_TOKEN: &str = "{tenant_domain}";
/// Stand-in label used to check a template's shape.
const SAMPLE_TENANT: &str = "sample-tenant";

#[derive(Clone, PartialEq, Eq)]
pub struct UrlTemplate {
    /// The URL with the token removed.
    text: Box<str>,
    /// Byte offset in `text` where the tenant label is inserted.
    token_at: Option<usize>,
}

impl fmt::Debug for UrlTemplate {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "UrlTemplate({self})")
    }
}

impl fmt::Display for UrlTemplate {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.token_at {
            Some(at) => write!(
                formatter,
                "{}{TENANT_DOMAIN_TOKEN}{}",
                &self.text[..at],
                &self.text[at..]
            ),
            None => formatter.write_str(&self.text),
        }
    }
}

/// What a URL must satisfy beyond its template shape.
#[derive(Debug, Clone, Copy)]
pub struct UrlRules {
    /// https only and no loopback or `localhost` host (the application's production validations).
    pub production: bool,
    /// Whether the `{tenant_domain}` token is meaningful for this key.
    pub allow_token: bool,
}

impl UrlTemplate {
    /// Parses and checks `input`, reporting every problem under `path`.
    pub fn parse(input: &str, rules: UrlRules, path: &str, problems: &mut Problems) -> Option<Self> {
        let occurrences = input.matches(TENANT_DOMAIN_TOKEN).count();
        let without_token = input.replacen(TENANT_DOMAIN_TOKEN, "", 1);
        if occurrences > 1 {
            problems.add(path, format!("`{TENANT_DOMAIN_TOKEN}` may appear at most once"));
            return None;
        }
        if without_token.contains(['{', '}']) {
            problems.add(path, format!("the only placeholder allowed is `{TENANT_DOMAIN_TOKEN}`"));
            return None;
        }
        let token_at = if occurrences == 1 {
            if !rules.allow_token {
                problems.add(path, format!("`{TENANT_DOMAIN_TOKEN}` is not allowed in this URL"));
                return None;
            }
            let at = input.find(TENANT_DOMAIN_TOKEN).unwrap_or_default();
            let scheme_end = input.find("://").map(|i| i + 3);
            let next = input[at + TENANT_DOMAIN_TOKEN.len()..].chars().next();
            let starts_host = scheme_end == Some(at)
                && input[..at - 3]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c));
            let prefixes_label = matches!(next, Some(c) if c == '.' || c == '-' || c.is_ascii_alphanumeric());
            if !starts_host || !prefixes_label {
                problems.add(
                    path,
                    format!(
                        "`{TENANT_DOMAIN_TOKEN}` must be the whole or the start of the left-most host label, \
                         as in `https://{TENANT_DOMAIN_TOKEN}.auth.example.com/`"
                    ),
                );
                return None;
            }
            Some(at)
        } else {
            None
        };
        let template = UrlTemplate {
            text: without_token.into(),
            token_at,
        };
        let sample = template.render(Some(SAMPLE_TENANT));
        let url = match url::Url::parse(&sample) {
            Ok(url) => url,
            Err(error) => {
                problems.add(path, format!("`{input}` is not a valid URL: {error}"));
                return None;
            }
        };
        let mut valid = true;
        if !matches!(url.scheme(), "http" | "https") {
            problems.add(path, format!("`{input}` must be an http or https URL"));
            valid = false;
        }
        if !url.username().is_empty() || url.password().is_some() {
            problems.add(
                path,
                "credentials in URLs are not allowed; use the dedicated secret keys",
            );
            valid = false;
        }
        let Some(host) = url.host_str() else {
            problems.add(path, format!("`{input}` has no host"));
            return None;
        };
        if rules.production {
            if url.scheme() != "https" {
                problems.add(path, format!("`{input}` must use https (production validations)"));
                valid = false;
            }
            if is_loopback_name(host) {
                problems.add(
                    path,
                    format!("`{input}` points at a loopback or localhost name (production validations)"),
                );
                valid = false;
            }
        }
        valid.then_some(template)
    }

    pub fn has_token(&self) -> bool {
        self.token_at.is_some()
    }

    /// Whether `candidate` is this template rendered for `tenant_domain`, compared bytewise
    /// without allocating. A templated URL never matches without a tenant.
    pub fn matches(&self, candidate: &str, tenant_domain: Option<&str>) -> bool {
        let (text, candidate) = (self.text.as_bytes(), candidate.as_bytes());
        match (self.token_at, tenant_domain) {
            (None, _) => candidate == text,
            (Some(at), Some(tenant)) => {
                let tenant = tenant.as_bytes();
                candidate.len() == text.len() + tenant.len()
                    && candidate[..at] == text[..at]
                    && candidate[at..at + tenant.len()] == *tenant
                    && candidate[at + tenant.len()..] == text[at..]
            }
            (Some(_), None) => false,
        }
    }

    /// Renders the URL for a tenant. Without a tenant the token is dropped together with the
    /// separator that followed it (`{tenant_domain}.auth.example.com` → `auth.example.com`).
    pub fn render(&self, tenant_domain: Option<&str>) -> String {
        match (self.token_at, tenant_domain) {
            (None, _) => self.text.to_string(),
            (Some(at), Some(tenant)) => {
                let mut rendered = String::with_capacity(self.text.len() + tenant.len());
                rendered.push_str(&self.text[..at]);
                rendered.push_str(tenant);
                rendered.push_str(&self.text[at..]);
                rendered
            }
            (Some(at), None) => {
                let rest = &self.text[at..];
                let rest = rest.strip_prefix(['.', '-']).unwrap_or(rest);
                format!("{}{rest}", &self.text[..at])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: UrlRules = UrlRules {
        production: false,
        allow_token: true,
    };
    const PROD: UrlRules = UrlRules {
        production: true,
        allow_token: true,
    };

    fn parse(input: &str, rules: UrlRules) -> Result<UrlTemplate, Vec<String>> {
        let mut problems = Problems::default();
        UrlTemplate::parse(input, rules, "key", &mut problems)
            .ok_or_else(|| problems.into_iter().map(|p| p.message).collect())
    }

    #[test]
    fn accepts_token_as_whole_or_prefix_of_leftmost_label() {
        let whole = parse("https://{tenant_domain}.auth.example.com/login", PROD).unwrap();
        assert_eq!(whole.render(Some("acme")), "https://acme.auth.example.com/login");
        let prefix = parse("https://{tenant_domain}-app-acct.us.idp.example/authorize", PROD).unwrap();
        assert_eq!(
            prefix.render(Some("acme")),
            "https://acme-app-acct.us.idp.example/authorize"
        );
        assert_eq!(
            prefix.to_string(),
            "https://{tenant_domain}-app-acct.us.idp.example/authorize"
        );
        let plain = parse("https://idp.example/authorize", PROD).unwrap();
        assert!(!plain.has_token());
        assert_eq!(plain.render(Some("acme")), "https://idp.example/authorize");
    }

    #[test]
    fn rejects_token_anywhere_else() {
        for input in [
            "https://auth.example.com/{tenant_domain}",
            "https://auth.example.com/?t={tenant_domain}",
            "https://x{tenant_domain}.example.com/",
            "https://auth.{tenant_domain}.example.com/",
            "https://{tenant_domain}/",
            "https://{tenant_domain}:443/",
            "https://{tenant_domain}.{tenant_domain}.example.com/",
            "https://user@{tenant_domain}.example.com/",
            "https://{tenant}.example.com/",
            "{tenant_domain}.example.com",
        ] {
            assert!(parse(input, DEV).is_err(), "{input} should be rejected");
        }
    }

    #[test]
    fn matches_without_allocating() {
        let template = parse("https://{tenant_domain}-app.idp.example/", DEV).unwrap();
        assert!(template.matches("https://acme-app.idp.example/", Some("acme")));
        assert!(!template.matches("https://acme-app.idp.example/", Some("globex")));
        assert!(!template.matches("https://acme-app.idp.example/", None));
        assert!(!template.matches("https://acme-app.idp.example/x", Some("acme")));
        assert!(!template.matches("https://é-app.idp.example/", Some("acme")));
        let plain = parse("https://idp.example/", DEV).unwrap();
        assert!(plain.matches("https://idp.example/", Some("acme")));
        assert!(plain.matches("https://idp.example/", None));
    }

    #[test]
    fn production_requires_https_and_no_loopback() {
        assert!(parse("http://idp.example/", PROD).is_err());
        assert!(parse("https://localhost/", PROD).is_err());
        assert!(parse("https://127.0.0.1:8443/", PROD).is_err());
        assert!(parse("https://{tenant_domain}.app.localhost/", PROD).is_err());
        assert!(parse("http://localhost:3000/", DEV).is_ok());
    }

    #[test]
    fn token_only_where_allowed() {
        let rules = UrlRules {
            production: false,
            allow_token: false,
        };
        assert!(parse("https://{tenant_domain}.example.com/", rules).is_err());
        assert!(parse("https://example.com/", rules).is_ok());
    }

    #[test]
    fn rejects_other_schemes_and_credentials() {
        assert!(parse("ftp://example.com/", DEV).is_err());
        assert!(parse("https://user:pw@example.com/", DEV).is_err());
        assert!(parse("not a url", DEV).is_err());
    }
}
