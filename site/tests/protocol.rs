//! Property tests of the request parser (the same harness as the
//! `site_request` fuzz target).

use proptest::prelude::*;
use site::protocol::{fuzz_request, object_lines, object_path, parse_object_lines, parse_range, parse_route, Route};
use vault::Kind;

fn part() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-][A-Za-z0-9._-]{0,15}"
}

proptest! {
    #[test]
    fn arbitrary_input_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        fuzz_request(&data);
    }

    #[test]
    fn request_like_input_never_panics(method in "(GET|PUT|HEAD|POST|DELETE|PATCH)", path in "/v1/[a-z/%?=&.0-9-]{0,60}") {
        fuzz_request(format!("{method} {path}\nbytes=1-2\n\"x\"\npacks/ab\n").as_bytes());
    }

    #[test]
    fn object_paths_route_back(vault in part(), parts in proptest::collection::vec(part(), 1..4), k in 0usize..6) {
        let kind = Kind::ALL[k];
        let name = parts.join("/");
        let path = object_path(&vault, kind, &name);
        prop_assert_eq!(parse_route("GET", &path).unwrap(), Route::Get { vault: vault.clone(), kind, name: name.clone() });
        prop_assert_eq!(parse_route("DELETE", &path).unwrap(), Route::Delete { vault, kind, name });
    }

    #[test]
    fn ranges_round_trip(a in any::<u64>(), len in any::<u64>()) {
        let b = a.saturating_add(len);
        prop_assert_eq!(parse_range(&format!("bytes={a}-{b}")), Ok((a, b)));
        if b > a {
            let backwards = format!("bytes={}-{}", b, a);
            prop_assert!(parse_range(&backwards).is_err());
        }
    }

    #[test]
    fn object_lines_round_trip(names in proptest::collection::vec((0usize..6, part()), 0..50)) {
        let objects: Vec<(Kind, String)> = names.into_iter().map(|(k, n)| (Kind::ALL[k], n)).collect();
        let text = object_lines(objects.iter().map(|(k, n)| (*k, n.as_str())));
        prop_assert_eq!(parse_object_lines(text.as_bytes()).unwrap(), objects);
    }
}

#[test]
fn escaping_and_unknown_requests_are_refused() {
    for (m, p) in [
        ("GET", "/v1/vaults/v/roots/../config"),
        ("GET", "/v1/vaults/../roots/x"),
        ("GET", "/v1/vaults/v/roots/a//b"),
        ("GET", "/v1/vaults/v/roots/.hidden"),
        ("GET", "/v1/vaults/v/tmp/x"),
        ("PATCH", "/v1/vaults/v/roots/x"),
        ("GET", "/v1/vaults/v/list/packs?prefix=%2e%2e"),
        ("GET", "/v1/vaults/v/list/packs?other=1"),
        ("GET", "/v1/vaults/v/packs"),
        ("PUT", "/v1/vaults/v/missing"),
        ("GET", "/v2/version"),
    ] {
        assert!(parse_route(m, p).is_err(), "{m} {p} was routed");
    }
    assert_eq!(
        parse_route("GET", "/v1/vaults/v/list/roots?prefix=web/&after=web/00000000000000000001").unwrap(),
        Route::List {
            vault: "v".into(),
            kind: Kind::Root,
            prefix: "web/".into(),
            after: "web/00000000000000000001".into()
        }
    );
    assert!(parse_route("GET", &format!("/v1/vaults/v/roots/{}", "a".repeat(2000))).is_err());
    assert!(parse_object_lines(b"packs/ab\nnokind/x\n").is_err());
    assert!(parse_object_lines("packs/ab\n".repeat(100_001).as_bytes()).is_err());
}
