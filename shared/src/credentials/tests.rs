use super::*;

fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn templates_put_values_and_base64_of_joined_values() {
    let op = vec![OperatorValue { name: "app".into(), env: "X_APP".into(), value: Some(Secret::new("A1".into())) }];
    let conn = values(&[("key", "k:2"), ("user", "u")]);
    let v = Values::new(&conn, &op);
    assert_eq!(Template::parse("{app}-{key}").unwrap().render(&v).unwrap(), "A1-k:2");
    assert_eq!(
        Template::parse("Userkeyauth {base64:app:key}").unwrap().render(&v).unwrap(),
        format!("Userkeyauth {}", base64::engine::general_purpose::STANDARD.encode("A1:k:2"))
    );
    assert_eq!(Template::parse("plain").unwrap().render(&v).unwrap(), "plain");
    assert_eq!(Template::parse("{missing}").unwrap().render(&v), Err("missing".into()));
    for bad in ["{", "}", "a}b{", "{Bad}", "{}", "{base64:a:}", "x{a"] {
        assert!(Template::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn rules_match_statuses_or_a_value_in_the_json_answer() {
    let r = Rule { statuses: vec![401], pointer: Some("/type".into()), values: vec!["203".into(), "233".into()] };
    assert!(r.matches(401, None));
    assert!(r.matches(200, Some(&serde_json::json!({"type": 203}))));
    assert!(r.matches(200, Some(&serde_json::json!({"type": "233"}))));
    assert!(!r.matches(200, Some(&serde_json::json!({"type": 238}))));
    assert!(!r.matches(200, Some(&serde_json::json!({"status": "Success"}))));
    assert!(!r.matches(403, None));
}

/// A spec that only judges answers, by these rules.
fn judged_by(refused: Rule, app_refused: Rule, message_pointer: &str) -> CredentialSpec {
    CredentialSpec {
        fields: vec![],
        operator: vec![],
        place: Placement::default(),
        exchange: None,
        verify: None,
        refused,
        app_refused,
        message_pointer: message_pointer.into(),
        recheck: Duration::from_secs(60),
    }
}

#[test]
fn a_refusal_carries_the_providers_own_words_wherever_it_puts_them() {
    let spec = judged_by(Rule { statuses: vec![401], ..Default::default() }, Rule::default(), "/detail");
    let refused = |body: &str| spec.judge(401, body.as_bytes());
    assert_eq!(refused(r#"{"detail":"key revoked","message":"other"}"#), Verdict::Refused("key revoked".into()));
    assert_eq!(refused(r#"{"error_message":"Invalid API token"}"#), Verdict::Refused("Invalid API token".into()));
    assert_eq!(
        refused("Your App ID and API Key do not match.\n"),
        Verdict::Refused("Your App ID and API Key do not match.".into())
    );
    assert_eq!(refused("<html>401</html>"), Verdict::Refused("the provider answered 401".into()));
    assert_eq!(refused(r#"{"error":{"code":1}}"#), Verdict::Refused("the provider answered 401".into()));
    assert_eq!(spec.judge(503, b"down"), Verdict::Unavailable("the provider answered 503".into()));
    assert_eq!(spec.judge(200, b"Invalid"), Verdict::Accepted);
}

#[test]
fn body_rules_read_only_the_keys_they_name_with_the_same_verdicts_as_a_full_parse() {
    let spec = judged_by(
        Rule { pointer: Some("/type".into()), values: vec!["203".into()], ..Default::default() },
        Rule { pointer: Some("/type".into()), values: vec!["238".into()], ..Default::default() },
        "/message",
    );
    let j = |b: &str| spec.judge(200, b.as_bytes());
    let refused = r#"{"status":"Error","message":"API key is not valid","lead":{"type":"x"},"type":"203"}"#;
    assert_eq!(j(refused), Verdict::Refused("API key is not valid".into()));
    assert_eq!(j(r#"{"type":238,"message":"App"}"#), Verdict::AppRefused("App".into()));
    assert_eq!(j(r#"{"\u0074ype":"203"}"#), Verdict::Refused("the provider answered 200".into()), "escaped keys too");
    assert_eq!(j(r#"{"lead":{"type":"203"}}"#), Verdict::Accepted, "a nested key is not the top-level one");
    assert_eq!(j(r#"[{"type":"203"}]"#), Verdict::Accepted);
    assert_eq!(j(r#"{"type":"203"} trailing"#), Verdict::Accepted, "not JSON");
    assert_eq!(j(""), Verdict::Accepted);
    let deep = CredentialSpec {
        refused: Rule { pointer: Some("/error/code".into()), values: vec!["1".into()], ..Default::default() },
        ..spec.clone()
    };
    assert!(matches!(deep.judge(200, br#"{"error":{"code":1}}"#), Verdict::Refused(_)));
}
