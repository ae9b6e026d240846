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
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(given) if tokens_match(given, expected) => Ok(()),
        _ => Err(ApiError::Unauthorized),
    }
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
    }
}
