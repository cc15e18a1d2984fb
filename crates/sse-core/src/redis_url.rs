//! `redis://[[username]:password@]host[:port][/db]`, the value of
//! `sse_redis_url`.

use std::fmt;

pub const DEFAULT_PORT: u16 = 6379;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// Host name or address; IPv6 addresses keep their brackets (`[::1]`).
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlError {
    Scheme,
    Tls,
    NoHost,
    Port(String),
    Db(String),
    Escape,
    Extra(String),
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UrlError::Scheme => f.write_str("must start with \"redis://\""),
            UrlError::Tls => f.write_str("TLS (\"rediss://\") is not supported yet"),
            UrlError::NoHost => f.write_str("has no host"),
            UrlError::Port(p) => write!(f, "has an invalid port \"{p}\""),
            UrlError::Db(d) => write!(f, "has an invalid database number \"{d}\""),
            UrlError::Escape => f.write_str("has a malformed %-escape in its credentials"),
            UrlError::Extra(e) => write!(f, "has unsupported trailing parts \"{e}\""),
        }
    }
}

impl std::error::Error for UrlError {}

impl RedisUrl {
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let rest = if let Some(rest) = url.strip_prefix("redis://") {
            rest
        } else if url.starts_with("rediss://") {
            return Err(UrlError::Tls);
        } else {
            return Err(UrlError::Scheme);
        };
        if let Some(i) = rest.find(['?', '#']) {
            return Err(UrlError::Extra(rest[i..].to_string()));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => match info.split_once(':') {
                Some((user, pass)) => (non_empty(decode(user)?), Some(decode(pass)?)),
                None => (non_empty(decode(info)?), None),
            },
        };
        let (host, port) = split_host_port(hostport)?;
        if host.is_empty() || host == "[]" {
            return Err(UrlError::NoHost);
        }
        let db = if path.is_empty() {
            0
        } else {
            path.parse().map_err(|_| UrlError::Db(path.to_string()))?
        };
        Ok(RedisUrl {
            host: host.to_string(),
            port,
            username,
            password,
            db,
        })
    }

    /// `host:port`, the form nginx's URL parser resolves.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

fn split_host_port(hostport: &str) -> Result<(&str, u16), UrlError> {
    let (host, port) = if hostport.starts_with('[') {
        match hostport.find(']') {
            Some(end) => {
                let after = &hostport[end + 1..];
                let port = match after.strip_prefix(':') {
                    Some(p) => Some(p),
                    None if after.is_empty() => None,
                    None => return Err(UrlError::Port(after.to_string())),
                };
                (&hostport[..=end], port)
            }
            None => return Err(UrlError::NoHost),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(UrlError::Port(p.to_string())),
        },
    };
    Ok((host, port))
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn decode(s: &str) -> Result<String, UrlError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or(UrlError::Escape)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| UrlError::Escape)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UrlError::Escape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let url = RedisUrl::parse("redis://127.0.0.1").unwrap();
        assert_eq!(url.address(), "127.0.0.1:6379");
        assert_eq!((url.username, url.password, url.db), (None, None, 0));
    }

    #[test]
    fn full_form() {
        let url = RedisUrl::parse("redis://app:p%40ss:word@redis.internal:7000/2").unwrap();
        assert_eq!(url.host, "redis.internal");
        assert_eq!(url.port, 7000);
        assert_eq!(url.username.as_deref(), Some("app"));
        assert_eq!(url.password.as_deref(), Some("p@ss:word"));
        assert_eq!(url.db, 2);
    }

    #[test]
    fn password_only_and_ipv6() {
        let url = RedisUrl::parse("redis://:secret@[::1]:6380").unwrap();
        assert_eq!(url.username, None);
        assert_eq!(url.password.as_deref(), Some("secret"));
        assert_eq!(url.address(), "[::1]:6380");
        assert_eq!(RedisUrl::parse("redis://[::1]").unwrap().port, DEFAULT_PORT);
    }

    #[test]
    fn errors() {
        assert_eq!(RedisUrl::parse("http://x"), Err(UrlError::Scheme));
        assert_eq!(RedisUrl::parse("127.0.0.1:6379"), Err(UrlError::Scheme));
        assert_eq!(RedisUrl::parse("rediss://x"), Err(UrlError::Tls));
        assert_eq!(RedisUrl::parse("redis://"), Err(UrlError::NoHost));
        assert_eq!(RedisUrl::parse("redis://:6379"), Err(UrlError::NoHost));
        assert_eq!(
            RedisUrl::parse("redis://h:0"),
            Err(UrlError::Port("0".into()))
        );
        assert_eq!(
            RedisUrl::parse("redis://h:99999"),
            Err(UrlError::Port("99999".into()))
        );
        assert_eq!(
            RedisUrl::parse("redis://h:x"),
            Err(UrlError::Port("x".into()))
        );
        assert_eq!(
            RedisUrl::parse("redis://h/abc"),
            Err(UrlError::Db("abc".into()))
        );
        assert_eq!(RedisUrl::parse("redis://u:%zz@h"), Err(UrlError::Escape));
        assert!(matches!(
            RedisUrl::parse("redis://h?x=1"),
            Err(UrlError::Extra(_))
        ));
        assert!(RedisUrl::parse("redis://h:6379").is_ok());
    }
}
