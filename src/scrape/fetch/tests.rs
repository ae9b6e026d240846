//! The fetcher's pure parts: target policy, retries, Retry-After, headers.

use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn public_and_not() {
    for public in [
        "93.184.216.34",
        "8.8.8.8",
        "2606:4700::1111",
        "::ffff:93.184.216.34",
    ] {
        assert!(is_public(ip(public)), "{public}");
    }
    for private in [
        "127.0.0.1",
        "127.0.0.2",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "224.0.0.1",
        "192.0.0.8",
        "198.18.0.1",
        "240.0.0.1",
        "192.0.2.1",
        "::",
        "::1",
        "fc00::1",
        "fd00:ec2::254",
        "fe80::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "2002:7f00:1::1",
        "2002:a9fe:a9fe::1",
        "::ffff:169.254.169.254",
        "::127.0.0.1",
        "64:ff9b::a9fe:a9fe",
        "2001:db8::1",
    ] {
        assert!(!is_public(ip(private)), "{private}");
    }
}

#[test]
fn policies_parse_and_permit() {
    assert_eq!(
        "".parse::<TargetPolicy>().unwrap(),
        TargetPolicy::PublicOnly
    );
    assert_eq!("1".parse::<TargetPolicy>().unwrap(), TargetPolicy::AllowAll);
    let list: TargetPolicy = "127.0.0.2/32, 10.0.0.0/8,::1".parse().unwrap();
    assert!(list.permits(ip("127.0.0.2")));
    assert!(list.permits(ip("10.9.9.9")));
    assert!(list.permits(ip("::1")));
    assert!(!list.permits(ip("127.0.0.1")));
    assert!(!list.permits(ip("169.254.169.254")));
    assert!(list.permits(ip("8.8.8.8")));
    assert!(!TargetPolicy::PublicOnly.permits(ip("127.0.0.1")));
    assert!("10.0.0.0/99"
        .parse::<TargetPolicy>()
        .unwrap_err()
        .contains("10.0.0.0/99"));
}

#[test]
fn retry_after_in_seconds_or_as_a_date() {
    let now = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    assert_eq!(
        parse_retry_after("120", now),
        Some(Duration::from_secs(120))
    );
    assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
    assert_eq!(
        parse_retry_after("99999999999999999999999", now),
        Some(MAX_RETRY_AFTER)
    );
    assert_eq!(parse_retry_after("86400", now), Some(MAX_RETRY_AFTER));
    let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
    assert_eq!(
        parse_retry_after(&later, now),
        Some(Duration::from_secs(90))
    );
    let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
    assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
    for bad in ["", "-5", "1.5", "soon", "Wed, 99 Foo 2020"] {
        assert_eq!(parse_retry_after(bad, now), None, "{bad}");
    }
}

#[test]
fn literal_hosts_are_checked_before_any_request() {
    let p = TargetPolicy::PublicOnly;
    assert!(check_url(&Url::parse("http://169.254.169.254/latest").unwrap(), &p).is_err());
    assert!(check_url(&Url::parse("http://[::1]:80/").unwrap(), &p).is_err());
    assert!(check_url(&Url::parse("http://example.org/").unwrap(), &p).is_ok());
    assert!(check_url(&Url::parse("ftp://example.org/").unwrap(), &p).is_err());
}
