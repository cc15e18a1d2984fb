//! The value of `sse_redis_url`:
//! - `redis://[[username]:password@]host[:port][/db]`: one Redis server;
//! - `redis-sentinel://[[username]:password@]host[:port][,host[:port]...]/service[/db]
//!   [?sentinel_username=U&sentinel_password=P]`: the master of `service`, as
//!   the listed Sentinels report it (default port 26379). The credentials
//!   before `@` are the master's; the Sentinels' own, if they require any,
//!   are the query's;
//! - `redis-cluster://[[username]:password@]host[:port][,host[:port]...]`:
//!   a Redis Cluster, found through these seed nodes (database 0 only).

use std::fmt;

pub const DEFAULT_PORT: u16 = 6379;
pub const DEFAULT_SENTINEL_PORT: u16 = 26379;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// Host name or address; IPv6 addresses keep their brackets (`[::1]`).
    /// With Sentinel: the first Sentinel.
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: u32,
    /// `redis-sentinel://`: where to ask for the master.
    pub sentinel: Option<Sentinel>,
    /// `redis-cluster://`: the seed nodes, as `host:port`.
    pub cluster: Option<Vec<String>>,
}

/// The Sentinel part of a `redis-sentinel://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sentinel {
    /// The monitored master's name (`sentinel monitor <service> ...`).
    pub service: String,
    /// `host:port` of each Sentinel, in the order given.
    pub nodes: Vec<String>,
    pub username: Option<String>,
    pub password: Option<String>,
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
    NoService,
    Query(String),
    ClusterDb,
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UrlError::Scheme => f.write_str(
                "must start with \"redis://\", \"redis-sentinel://\" or \"redis-cluster://\"",
            ),
            UrlError::Tls => f.write_str("TLS (\"rediss://\") is not supported yet"),
            UrlError::NoHost => f.write_str("has no host"),
            UrlError::Port(p) => write!(f, "has an invalid port \"{p}\""),
            UrlError::Db(d) => write!(f, "has an invalid database number \"{d}\""),
            UrlError::Escape => f.write_str("has a malformed %-escape in its credentials"),
            UrlError::Extra(e) => write!(f, "has unsupported trailing parts \"{e}\""),
            UrlError::NoService => f.write_str("names no Sentinel service (\"/mymaster\")"),
            UrlError::ClusterDb => f.write_str("selects a database: a Redis Cluster has only 0"),
            UrlError::Query(q) => write!(f, "has an unsupported query parameter \"{q}\""),
        }
    }
}

impl std::error::Error for UrlError {}

impl RedisUrl {
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        if let Some(rest) = url.strip_prefix("redis-sentinel://") {
            return parse_sentinel(rest);
        }
        if let Some(rest) = url.strip_prefix("redis-cluster://") {
            return parse_cluster(rest);
        }
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
        let (username, password) = credentials(userinfo)?;
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
            sentinel: None,
            cluster: None,
        })
    }

    /// `host:port`, the form nginx's URL parser resolves.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

fn parse_sentinel(rest: &str) -> Result<RedisUrl, UrlError> {
    if let Some(i) = rest.find('#') {
        return Err(UrlError::Extra(rest[i..].to_string()));
    }
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let (username, password) = credentials(userinfo)?;
    let mut nodes = Vec::new();
    let mut first = None;
    for hostport in hosts.split(',') {
        let (host, port) = split_host_port_or(hostport, DEFAULT_SENTINEL_PORT)?;
        if host.is_empty() || host == "[]" {
            return Err(UrlError::NoHost);
        }
        first.get_or_insert((host.to_string(), port));
        nodes.push(format!("{host}:{port}"));
    }
    let (service, db) = match path.split_once('/') {
        Some((service, db)) => (service, db),
        None => (path, ""),
    };
    if service.is_empty() {
        return Err(UrlError::NoService);
    }
    let service = decode(service)?;
    let db = if db.is_empty() {
        0
    } else {
        db.parse().map_err(|_| UrlError::Db(db.to_string()))?
    };
    let (mut sentinel_username, mut sentinel_password) = (None, None);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sentinel_username", v)) => sentinel_username = non_empty(decode(v)?),
            Some(("sentinel_password", v)) => sentinel_password = Some(decode(v)?),
            _ => return Err(UrlError::Query(pair.to_string())),
        }
    }
    let (host, port) = first.ok_or(UrlError::NoHost)?;
    Ok(RedisUrl {
        host,
        port,
        username,
        password,
        db,
        sentinel: Some(Sentinel {
            service,
            nodes,
            username: sentinel_username,
            password: sentinel_password,
        }),
        cluster: None,
    })
}

fn parse_cluster(rest: &str) -> Result<RedisUrl, UrlError> {
    if let Some(i) = rest.find(['?', '#']) {
        return Err(UrlError::Extra(rest[i..].to_string()));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    if !path.is_empty() && path != "0" {
        return Err(UrlError::ClusterDb);
    }
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let (username, password) = credentials(userinfo)?;
    let mut seeds = Vec::new();
    for hostport in hosts.split(',') {
        let (host, port) = split_host_port(hostport)?;
        if host.is_empty() || host == "[]" {
            return Err(UrlError::NoHost);
        }
        seeds.push(format!("{host}:{port}"));
    }
    let (host, port) = split_host_port(hosts.split(',').next().unwrap_or_default())?;
    Ok(RedisUrl {
        host: host.to_string(),
        port,
        username,
        password,
        db: 0,
        sentinel: None,
        cluster: Some(seeds),
    })
}

type Credentials = (Option<String>, Option<String>);

fn credentials(userinfo: Option<&str>) -> Result<Credentials, UrlError> {
    Ok(match userinfo {
        None => (None, None),
        Some(info) => match info.split_once(':') {
            Some((user, pass)) => (non_empty(decode(user)?), Some(decode(pass)?)),
            None => (non_empty(decode(info)?), None),
        },
    })
}

fn split_host_port(hostport: &str) -> Result<(&str, u16), UrlError> {
    split_host_port_or(hostport, DEFAULT_PORT)
}

fn split_host_port_or(hostport: &str, default_port: u16) -> Result<(&str, u16), UrlError> {
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
        None => default_port,
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
    fn sentinel_form() {
        let url = RedisUrl::parse(
            "redis-sentinel://app:pw@10.0.0.1,10.0.0.2:26380,[::1]/my%2Dmaster/3?sentinel_password=s%40",
        )
        .unwrap();
        let sentinel = url.sentinel.clone().unwrap();
        assert_eq!(sentinel.service, "my-master");
        assert_eq!(
            sentinel.nodes,
            ["10.0.0.1:26379", "10.0.0.2:26380", "[::1]:26379"]
        );
        assert_eq!(sentinel.password.as_deref(), Some("s@"));
        assert_eq!(sentinel.username, None);
        assert_eq!(url.username.as_deref(), Some("app"));
        assert_eq!(url.password.as_deref(), Some("pw"));
        assert_eq!(url.db, 3);
        let bare = RedisUrl::parse("redis-sentinel://h/m").unwrap();
        assert_eq!(bare.sentinel.unwrap().nodes, ["h:26379"]);
        assert_eq!(bare.db, 0);
        assert_eq!(RedisUrl::parse("redis://h").unwrap().sentinel, None);
    }

    #[test]
    fn cluster_form() {
        let url = RedisUrl::parse("redis-cluster://:pw@10.0.0.1:7000,10.0.0.2").unwrap();
        assert_eq!(
            url.cluster.as_deref().unwrap(),
            ["10.0.0.1:7000", "10.0.0.2:6379"]
        );
        assert_eq!(url.password.as_deref(), Some("pw"));
        assert_eq!(url.sentinel, None);
        assert!(RedisUrl::parse("redis-cluster://h/0").is_ok());
        assert_eq!(
            RedisUrl::parse("redis-cluster://h/1"),
            Err(UrlError::ClusterDb)
        );
        assert_eq!(
            RedisUrl::parse("redis-cluster://h,,x"),
            Err(UrlError::NoHost)
        );
        assert!(matches!(
            RedisUrl::parse("redis-cluster://h?x"),
            Err(UrlError::Extra(_))
        ));
    }

    #[test]
    fn sentinel_errors() {
        assert_eq!(
            RedisUrl::parse("redis-sentinel://h"),
            Err(UrlError::NoService)
        );
        assert_eq!(
            RedisUrl::parse("redis-sentinel://h/"),
            Err(UrlError::NoService)
        );
        assert_eq!(
            RedisUrl::parse("redis-sentinel://h,/m"),
            Err(UrlError::NoHost)
        );
        assert_eq!(
            RedisUrl::parse("redis-sentinel://h:0/m"),
            Err(UrlError::Port("0".into()))
        );
        assert_eq!(
            RedisUrl::parse("redis-sentinel://h/m/x"),
            Err(UrlError::Db("x".into()))
        );
        assert_eq!(
            RedisUrl::parse("redis-sentinel://h/m?timeout=1"),
            Err(UrlError::Query("timeout=1".into()))
        );
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
