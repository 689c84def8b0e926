//! Metadata server addresses. The password is kept apart from the address so that no
//! `Display`, log line, error or volume context can ever carry it.

use std::fmt;

/// A Redis-protocol server (KeyDB, Valkey, Redis) without database number.
#[derive(Clone, PartialEq, Eq)]
pub struct MetaUrl {
    tls: bool,
    user: String,
    password: String,
    host: String,
    port: u16,
}

impl MetaUrl {
    /// Parses `redis://[user[:password]@]host[:port][/db]` or `rediss://...`.
    /// A database number in the URL is ignored: kelp chooses databases itself.
    pub fn parse(s: &str) -> Result<MetaUrl, super::Error> {
        let bad = |why: String| super::Error::BadUrl { why };
        let (tls, rest) = if let Some(r) = s.strip_prefix("rediss://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("redis://") {
            (false, r)
        } else {
            return Err(bad("it must start with redis:// or rediss://".into()));
        };
        let rest = rest.split('/').next().unwrap_or_default();
        let (auth, hostport) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        let (user, password) = match auth {
            Some(a) => match a.split_once(':') {
                Some((u, p)) => (u.to_string(), p.to_string()),
                None => (String::new(), a.to_string()),
            },
            None => (String::new(), String::new()),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h.to_string(), p.parse::<u16>().map_err(|_| bad(format!("bad port in host {hostport:?}")))?)
            }
            _ => (hostport.to_string(), 6379),
        };
        if host.is_empty() {
            return Err(bad("it has no host".into()));
        }
        Ok(MetaUrl { tls, user, password, host, port })
    }

    /// Replaces the password (e.g. from `KELP_META_PASSWORD`) when one is given.
    pub fn with_password(mut self, password: Option<&str>) -> MetaUrl {
        if let Some(p) = password.filter(|p| !p.is_empty()) {
            self.password = p.to_string();
        }
        self
    }

    pub fn password(&self) -> Option<&str> {
        (!self.password.is_empty()).then_some(self.password.as_str())
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn scheme(&self) -> &'static str {
        if self.tls {
            "rediss"
        } else {
            "redis"
        }
    }

    /// The server's address without credentials or database, for others to reach it.
    pub fn public_url(&self) -> String {
        let user = if self.user.is_empty() { String::new() } else { format!("{}@", self.user) };
        format!("{}://{user}{}:{}", self.scheme(), self.host, self.port)
    }

    /// Address of database `db` without any credentials, as juicefs is given it; the
    /// password travels in `META_PASSWORD`.
    pub fn public_db_url(&self, db: u32) -> String {
        let user = if self.user.is_empty() { String::new() } else { format!("{}@", self.user) };
        format!("{}://{user}{}:{}/{db}", self.scheme(), self.host, self.port)
    }

    /// Full connection info for the redis crate, password included. Never log it.
    pub(crate) fn connection_info(&self, db: u32) -> redis::ConnectionInfo {
        use redis::{ConnectionAddr, IntoConnectionInfo};
        let addr = if self.tls {
            ConnectionAddr::TcpTls {
                host: self.host.clone(),
                port: self.port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(self.host.clone(), self.port)
        };
        let mut redis = redis::RedisConnectionInfo::default().set_db(db as i64);
        if !self.user.is_empty() {
            redis = redis.set_username(self.user.clone());
        }
        if !self.password.is_empty() {
            redis = redis.set_password(self.password.clone());
        }
        addr.into_connection_info().expect("address").set_redis_settings(redis)
    }
}

/// A URL kelp was handed (a publish context, a flag), fit for an error or a log line:
/// whatever stands before its last `@` after the scheme (user and password) is
/// replaced, parseable or not, so a forged or mistyped URL never echoes a credential.
pub fn redact(raw: &str) -> String {
    let (scheme, rest) = match raw.find("://") {
        Some(at) => raw.split_at(at + 3),
        None => ("", raw),
    };
    match rest.rfind('@') {
        Some(at) => format!("{scheme}***{}", &rest[at..]),
        None => raw.to_string(),
    }
}

/// Shows the address with the password replaced, so it is safe in logs and errors.
impl fmt::Display for MetaUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match (self.user.is_empty(), self.password.is_empty()) {
            (true, true) => String::new(),
            (false, true) => format!("{}@", self.user),
            (u, false) => format!("{}:***@", if u { "" } else { &self.user }),
        };
        write!(f, "{}://{auth}{}:{}", self.scheme(), self.host, self.port)
    }
}

impl fmt::Debug for MetaUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handed_urls_are_redacted_whatever_their_form() {
        assert_eq!(redact("redis://:secret@h:1/2"), "redis://***@h:1/2");
        assert_eq!(redact("redis://u:secret@h:notaport"), "redis://***@h:notaport");
        assert_eq!(redact("u:p@w@h:1"), "***@h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        for raw in ["redis://:s3cr3t@h:1", "rediss://a:s3cr3t@[::1]:x", "s3cr3t@h"] {
            assert!(!redact(raw).contains("s3cr3t"), "{raw}");
        }
    }

    #[test]
    fn parses_and_redacts() {
        let u = MetaUrl::parse("redis://:topsecret@10.0.0.1:6380/7").unwrap();
        assert_eq!(u.host(), "10.0.0.1");
        assert_eq!(u.port(), 6380);
        assert_eq!(u.password(), Some("topsecret"));
        let shown = format!("{u} {u:?} {}", u.public_db_url(3));
        assert!(!shown.contains("topsecret"), "{shown}");
        assert_eq!(u.public_db_url(3), "redis://10.0.0.1:6380/3");
    }

    #[test]
    fn defaults_and_errors() {
        // A lone token before `@` is taken as a password (the older URL form), so it is
        // redacted rather than shown.
        let u = MetaUrl::parse("rediss://token@keydb").unwrap();
        assert_eq!(u.port(), 6379);
        assert_eq!(u.to_string(), "rediss://:***@keydb:6379");
        let u = MetaUrl::parse("redis://alice:pw@keydb:1").unwrap();
        assert_eq!(u.to_string(), "redis://alice:***@keydb:1");
        assert!(MetaUrl::parse("http://x").is_err());
        assert!(MetaUrl::parse("redis://").is_err());
        assert!(MetaUrl::parse("redis://h:notaport").is_err());
    }

    #[test]
    fn password_from_environment_wins() {
        let u = MetaUrl::parse("redis://h:1").unwrap().with_password(Some("pw"));
        assert_eq!(u.password(), Some("pw"));
        assert_eq!(u.to_string(), "redis://:***@h:1");
    }
}
