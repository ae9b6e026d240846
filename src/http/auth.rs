//! Bearer tokens. Both sides are hashed before a constant-time comparison, so
//! neither the token's bytes nor its length leak through timing.

use actix_web::http::header;
use actix_web::HttpRequest;
use subtle::ConstantTimeEq;

use super::error::ApiError;

/// Passes when no token is required, or the request carries the right one.
pub fn require(req: &HttpRequest, expected: Option<&str>) -> Result<(), ApiError> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer);
    match given {
        Some(given) if tokens_match(given, expected) => Ok(()),
        _ => Err(ApiError::Unauthorized),
    }
}

/// The token of a `Bearer` credential; the scheme is matched without regard
/// to case (RFC 9110, 11.1), and spaces around the token are dropped.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn tokens_match(given: &str, expected: &str) -> bool {
    let a = blake3::hash(given.as_bytes());
    let b = blake3::hash(expected.as_bytes());
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn tokens() {
        let with = |h: &str| {
            TestRequest::default()
                .insert_header((header::AUTHORIZATION, h))
                .to_http_request()
        };
        assert!(require(&TestRequest::default().to_http_request(), None).is_ok());
        assert!(require(&TestRequest::default().to_http_request(), Some("t")).is_err());
        assert!(require(&with("Bearer t"), Some("t")).is_ok());
        assert!(require(&with("Bearer t2"), Some("t")).is_err());
        assert!(require(&with("Basic t"), Some("t")).is_err());
        // The scheme in any case, as RFC 9110 says.
        for h in ["bearer t", "BEARER t", "BeArEr t", "Bearer  t "] {
            assert!(require(&with(h), Some("t")).is_ok(), "{h}");
        }
        for h in ["Bearert", "Bearer", "Bearer ", "bearer t2", "Bear t", "t"] {
            assert!(require(&with(h), Some("t")).is_err(), "{h}");
        }
    }
}
