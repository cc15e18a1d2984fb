//! Admission: what a request may subscribe to, once `sse_channel`,
//! `sse_allow` and `sse_user` are evaluated for it. Refusals carry the
//! status and the reason the client reads.

use ngx::ffi::{
    ngx_http_complex_value_t, NGX_HTTP_BAD_REQUEST, NGX_HTTP_FORBIDDEN,
    NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_LOG_ERR, NGX_LOG_WARN,
};
use ngx::http::Request;
use ngx::ngx_log_error;
use sse_core::envelope;
use sse_core::pattern::{Grants, Pattern};

use crate::config::{LocConf, REFUSED_DENY};

/// What the request gets.
pub struct Admitted {
    pub subscriptions: Vec<Pattern>,
    pub user: Option<Box<[u8]>>,
    /// `None`: open location.
    pub grants: Option<Grants>,
    /// Requested but not granted, dropped (`sse_refused drop`).
    pub refused: Vec<Pattern>,
}

/// A refusal: the status and the reason shown to the client.
pub struct Refusal {
    pub status: u32,
    pub reason: String,
}

impl Refusal {
    fn new(status: u32, reason: impl Into<String>) -> Self {
        Refusal {
            status,
            reason: reason.into(),
        }
    }
}

/// Decides what the request gets.
pub fn admit(request: &Request, lcf: &LocConf) -> Result<Admitted, Refusal> {
    let channels = evaluate(request, &lcf.channels)?;
    let values: Vec<&[u8]> = channels.iter().map(|v| v.as_slice()).collect();
    let mut subscriptions = lcf
        .subscriptions_for(&values)
        .map_err(|e| Refusal::new(NGX_HTTP_BAD_REQUEST, format!("sse: {e}\n")))?;
    let user = user_of(request, lcf)?;

    let Some(grants) = grants_of(request, lcf)? else {
        return Ok(Admitted {
            subscriptions,
            user,
            grants: None,
            refused: Vec::new(),
        });
    };
    let (permitted, refused): (Vec<Pattern>, Vec<Pattern>) =
        subscriptions.drain(..).partition(|s| grants.permits(s));
    if !refused.is_empty() && (lcf.refused == REFUSED_DENY || permitted.is_empty()) {
        let names: Vec<&str> = refused.iter().map(Pattern::as_str).collect();
        return Err(Refusal::new(
            NGX_HTTP_FORBIDDEN,
            format!("sse: not allowed: {}\n", names.join(", ")),
        ));
    }
    Ok(Admitted {
        subscriptions: permitted,
        user,
        grants: Some(grants),
        refused,
    })
}

/// `sse_allow` evaluated for this request: `None` if the location has none
/// (an open location). Invalid entries grant nothing and are logged.
pub fn grants_of(request: &Request, lcf: &LocConf) -> Result<Option<Grants>, Refusal> {
    let Some(allow) = &lcf.allow else {
        return Ok(None);
    };
    let grant_values = evaluate(request, allow)?;
    let (grants, invalid) = Grants::parse(&grant_values);
    if !invalid.is_empty() {
        ngx_log_error!(
            NGX_LOG_WARN,
            request.log(),
            "sse: ignoring invalid grant(s) from sse_allow: {}",
            invalid.join(", ").escape_debug()
        );
    }
    Ok(Some(grants))
}

/// `sse_user`: none, or a valid user id (an invalid one is refused: it
/// could never match an audience or a revocation).
pub fn user_of(request: &Request, lcf: &LocConf) -> Result<Option<Box<[u8]>>, Refusal> {
    let Some(cv) = lcf.user else {
        return Ok(None);
    };
    let values = evaluate(request, &[cv])?;
    let id = values.first().map_or(&[][..], Vec::as_slice);
    if id.is_empty() {
        return Ok(None);
    }
    if envelope::valid_user(id) {
        return Ok(Some(id.into()));
    }
    ngx_log_error!(
        NGX_LOG_ERR,
        request.log(),
        "sse: sse_user evaluated to an invalid user id \"{}\"",
        String::from_utf8_lossy(id).escape_debug()
    );
    Err(Refusal::new(
        NGX_HTTP_FORBIDDEN,
        "sse: invalid user identity\n",
    ))
}

/// Evaluates complex values (variables included) in the request.
fn evaluate(
    request: &Request,
    values: &[*mut ngx_http_complex_value_t],
) -> Result<Vec<Vec<u8>>, Refusal> {
    values
        .iter()
        .map(|&cv| {
            // SAFETY: `cv` was compiled at configuration time for this
            // location and lives in the configuration pool.
            let cv = unsafe { &*cv };
            request
                .get_complex_value(cv)
                .map(|v| v.as_bytes().to_vec())
                .ok_or_else(|| {
                    Refusal::new(
                        NGX_HTTP_INTERNAL_SERVER_ERROR,
                        "sse: cannot evaluate configuration\n",
                    )
                })
        })
        .collect()
}
