//! Locators, checked the same way at submit ([`super::spec`]) and when rules
//! are compiled (`scrape::extract`): CSS selectors, with errors that say what
//! is wrong (the selector parser's own text for several of them asks the
//! reader to report a bug), and JSON pointers (RFC 6901).

use scraper::error::SelectorErrorKind;
use scraper::Selector;
use selectors::parser::SelectorParseErrorKind;

/// A CSS selector as the extractor uses it, or what is wrong with it.
pub fn parse_selector(raw: &str) -> Result<Selector, String> {
    Selector::parse(raw).map_err(|e| format!("invalid CSS selector: {}", describe(raw, &e)))
}

/// Checks a JSON pointer (RFC 6901): empty (the whole document), or `/`
/// followed by reference tokens, in which `~` is only ever `~0` (a `~`) or
/// `~1` (a `/`).
pub fn check_pointer(raw: &str) -> Result<(), String> {
    if !raw.is_empty() && !raw.starts_with('/') {
        return Err("must be a JSON pointer: empty or starting with '/'".into());
    }
    let mut chars = raw.char_indices();
    while let Some((at, c)) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some((_, '0' | '1'))) {
            return Err(format!(
                "must be a JSON pointer: '~' at byte {at} is not followed by '0' or '1' \
                 (write '~0' for '~' and '~1' for '/')"
            ));
        }
    }
    Ok(())
}

/// What a selector error means, in the selector's own terms.
fn describe(raw: &str, error: &SelectorErrorKind) -> String {
    use SelectorParseErrorKind as K;
    let unclosed = unclosed_function(raw);
    let message = match error {
        // An input that ends inside `:has(`, `:not(` or another function
        // fails as an empty or dangling selector: say which one is open.
        SelectorErrorKind::EndOfLine
        | SelectorErrorKind::UnexpectedSelectorParseError(
            K::EmptySelector | K::DanglingCombinator,
        ) if unclosed.is_some() => {
            let name = unclosed.unwrap_or_default();
            return format!("unclosed `{name}(`: it needs a selector and a closing `)`");
        }
        SelectorErrorKind::UnexpectedToken => "unexpected character or token",
        SelectorErrorKind::EndOfLine => "the selector ends too early",
        SelectorErrorKind::InvalidAtRule | SelectorErrorKind::InvalidAtRuleBody => {
            "@-rules are not selectors"
        }
        SelectorErrorKind::QualRuleInvalid => "not a valid selector",
        SelectorErrorKind::TooManyNestedBlocks => "too deeply nested",
        SelectorErrorKind::ExpectedColonOnPseudoElement
        | SelectorErrorKind::ExpectedIdentityOnPseudoElement => {
            "a pseudo-element needs a name after `::`"
        }
        SelectorErrorKind::UnexpectedSelectorParseError(kind) => match kind {
            K::ExpectedNamespace | K::ExpectedBarInAttr | K::ExplicitNamespaceUnexpectedToken => {
                "namespace prefixes (`ns|name`) are not supported"
            }
            K::EmptySelector => "empty selector (an empty `:not()`, or a stray comma)",
            K::DanglingCombinator => "a combinator (`>`, `+`, `~`) with no selector after it",
            K::NoQualifiedNameInAttributeSelector | K::InvalidQualNameInAttr => {
                "an attribute selector needs an attribute name"
            }
            K::UnexpectedTokenInAttributeSelector | K::BadValueInAttr => {
                "an attribute selector's value must be a name or a quoted string"
            }
            K::NonCompoundSelector => "only a simple selector is allowed here",
            K::NonPseudoElementAfterSlotted
            | K::InvalidPseudoElementAfterSlotted
            | K::InvalidPseudoElementInsideWhere
            | K::InvalidState => "pseudo-element in a place it cannot be",
            K::PseudoElementExpectedColon | K::PseudoElementExpectedIdent => {
                "a pseudo-element needs a name after `::`"
            }
            K::NoIdentForPseudo => "a `:` needs a pseudo-class name after it",
            K::UnsupportedPseudoClassOrElement => "unsupported pseudo-class or pseudo-element",
            K::UnexpectedIdent => "unexpected name",
            K::ClassNeedsIdent => "a `.` needs a class name after it",
        },
    };
    message.to_owned()
}

/// The pseudo-class (with its `:`) of the innermost function still open at
/// the end of `raw`, if any; brackets and quoted strings are skipped.
fn unclosed_function(raw: &str) -> Option<String> {
    let mut open: Vec<Option<String>> = Vec::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    // The `:name` just read, if any.
    let mut name = String::new();
    for c in raw.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        if let Some(q) = quote {
            match c {
                '\\' => escaped = true,
                c if c == q => quote = None,
                _ => {}
            }
            continue;
        }
        match c {
            '\\' => {
                escaped = true;
                name.clear();
            }
            '"' | '\'' => {
                quote = Some(c);
                name.clear();
            }
            '(' => open.push((name.len() > 1).then(|| std::mem::take(&mut name))),
            '[' => open.push(None),
            ')' | ']' => {
                open.pop();
            }
            ':' => {
                name.clear();
                name.push(':');
            }
            c if !name.is_empty() && (c.is_alphanumeric() || c == '-' || c == '_') => name.push(c),
            _ => name.clear(),
        }
        if matches!(c, '(' | '[' | ')' | ']') {
            name.clear();
        }
    }
    open.pop().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector_error(raw: &str) -> String {
        parse_selector(raw).expect_err(raw)
    }

    #[test]
    fn selector_errors_say_what_is_wrong() {
        let cases = [
            (":has(", "unclosed `:has(`"),
            ("a:has(", "unclosed `:has(`"),
            (":not(", "unclosed `:not(`"),
            ("li:not(.x, :has(", "unclosed `:has(`"),
            (":nth-child(", "unclosed `:nth-child(`"),
            ("ns|a", "namespace prefixes"),
            ("a[ns|href]", "namespace prefixes"),
            (":not()", "empty selector"),
            ("a,", "empty selector"),
            ("a >", "combinator"),
            ("..bad[", "a `.` needs a class name"),
            (":frobnicate", "unsupported pseudo-class"),
        ];
        for (raw, want) in cases {
            let got = selector_error(raw);
            assert!(got.starts_with("invalid CSS selector: "), "{raw}: {got}");
            assert!(got.contains(want), "{raw}: {got}");
            assert!(!got.contains("report"), "{raw}: {got}");
        }
        // What CSS closes at the end of input stays valid.
        for raw in [
            ":has(a",
            "a:not(.b",
            "*|a",
            "a[title='(']",
            "article.product",
        ] {
            assert!(parse_selector(raw).is_ok(), "{raw}");
        }
    }

    #[test]
    fn pointers_follow_rfc_6901() {
        for ok in ["", "/", "/a", "/a/0", "/~0", "/~1", "/a~0b~1c", "/é/~01"] {
            assert_eq!(check_pointer(ok), Ok(()), "{ok}");
        }
        for bad in ["/~2", "/~", "/a~", "/~~0", "/a/~x", "a", "~0"] {
            assert!(check_pointer(bad).is_err(), "{bad}");
        }
        assert!(check_pointer("/~2").unwrap_err().contains("'~0' for '~'"));
    }
}
