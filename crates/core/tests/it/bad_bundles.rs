//! Broken bundles give located, readable problems — never a panic, never a partial bundle.

use warden_core::{Bundle, Problem, SourceFile};

use crate::example_files;

/// The example bundle with `path` replaced by `edit(text)`.
fn broken(path: &str, edit: impl Fn(&str) -> String) -> Vec<Problem> {
    let mut files = example_files();
    let f = files.iter_mut().find(|f| f.path == path).unwrap_or_else(|| panic!("no {path}"));
    f.text = edit(&f.text);
    match Bundle::load(&files) {
        Ok(_) => panic!("the bundle should be invalid"),
        Err(e) => e.problems,
    }
}

fn line_of(files_text: &str, needle: &str) -> usize {
    let offset = files_text.find(needle).unwrap_or_else(|| panic!("`{needle}` not found"));
    files_text[..offset].matches('\n').count() + 1
}

fn original(path: &str) -> String {
    example_files().into_iter().find(|f| f.path == path).unwrap().text
}

#[test]
fn cedar_syntax_error() {
    let path = "cedar/network.cedar";
    let problems =
        broken(path, |t| t.replace("resource.tags.contains(\"internal\")", "resource.tags.contains(\"internal\" &&"));
    assert_eq!(problems[0].file, path);
    assert_eq!(problems[0].line, Some(line_of(&original(path), "when { resource.tags.contains(\"internal\")")));
    assert!(problems[0].message.contains("unexpected token"), "{}", problems[0]);
}

#[test]
fn cedar_typo_in_an_attribute_is_a_validation_error() {
    let path = "cedar/containment.cedar";
    let problems = broken(path, |t| {
        t.replace("resource.tags.contains(\"break-glass\")", "resource.tag.contains(\"break-glass\")")
    });
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].file, path);
    assert_eq!(problems[0].line, Some(line_of(&original(path), "@id(\"break-glass-untouchable\")")));
    assert!(problems[0].message.contains("attribute `tag`"), "{}", problems[0]);
}

#[test]
fn cedar_typo_in_an_entity_type_or_action_is_a_validation_error() {
    let path = "cedar/network.cedar";
    let problems = broken(path, |t| t.replacen("Warden::Action::\"ip.block\"", "Warden::Action::\"ip.blok\"", 1));
    assert!(problems.iter().any(|p| p.message.contains("ip.blok")), "{problems:?}");
    let problems = broken(path, |t| t.replace("Warden::Agent::", "Warden::Agnet::"));
    assert!(problems.iter().any(|p| p.message.contains("Warden::Agnet")), "{problems:?}");
}

/// Cedar types `has` of an attribute a closed record lacks as `false`, so a misspelt class in
/// a sequence rule would validate and silently never (or always) match: Warden refuses it,
/// whether read by `has` or by access, at the policy's line.
#[test]
fn a_history_rule_naming_a_class_not_in_the_catalog_is_refused() {
    let path = "cedar/containment.cedar";
    for (typo, class) in [
        ("context.task.history has \"alert.enrichh\"", "alert.enrichh"),
        ("context.task.history has enrich", "enrich"),
        ("(context.task.history has \"alert.enrich\" && context.task.history[\"alert.enrichd\"] > 0)", "alert.enrichd"),
    ] {
        let problems = broken(path, |t| t.replace("context.task.history has \"alert.enrich\"", typo));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].file, path);
        assert_eq!(problems[0].line, Some(line_of(&original(path), "@id(\"phish-disable-after-enrichment\")")));
        assert!(problems[0].message.contains(&format!("`{class}`, which is not in the catalog")), "{}", problems[0]);
    }
}

#[test]
fn handwritten_rules_must_name_owner_and_level() {
    let path = "cedar/network.cedar";
    let problems =
        broken(path, |t| t.replace("@owner(\"team:soc-engineering\")\n", "").replace("@level(\"4\")", "@level(\"9\")"));
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert!(text.iter().any(|p| p.contains("needs an `@owner")), "{text:?}");
    assert!(text.iter().any(|p| p.contains("level must be 1 to 4")), "{text:?}");
}

#[test]
fn unknown_action_in_a_guardrail() {
    let path = "agents/phish-triage.toml";
    let problems = broken(path, |t| t.replace("action = \"email.release\"", "action = \"email.relaese\""));
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].file, path);
    assert_eq!(problems[0].line, Some(line_of(&original(path), "action = \"email.release\"")));
    assert_eq!(problems[0].message, "unknown action `email.relaese` (not in actions.toml)");
}

#[test]
fn level_seven() {
    let path = "agents/edr-responder.toml";
    let problems = broken(path, |t| t.replacen("level = 3", "level = 7", 1));
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].line, Some(line_of(&original(path), "level = 3")));
    assert_eq!(problems[0].message, "autonomy level must be 0 to 4, not 7");
}

#[test]
fn threshold_above_one() {
    let path = "agents/phish-triage.toml";
    let problems = broken(path, |t| t.replace("autonomous = 0.90", "autonomous = 1.5"));
    assert_eq!(problems[0].line, Some(line_of(&original(path), "autonomous = 0.90")));
    assert!(problems[0].message.contains("between 0 and 1, not 1.5"), "{}", problems[0]);
}

#[test]
fn duplicate_agent_id() {
    let mut files = example_files();
    let copy = files.iter().find(|f| f.path == "agents/phish-triage.toml").unwrap().text.clone();
    files.push(SourceFile::new("agents/phish-triage-2.toml", copy));
    let problems = Bundle::load(&files).unwrap_err().problems;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].file, "agents/phish-triage.toml");
    assert_eq!(problems[0].line, Some(4));
    assert!(problems[0].message.starts_with("duplicate agent id `spiffe://acme.example/soc/phish-triage`"));
}

#[test]
fn compensation_naming_a_missing_action() {
    let path = "actions.toml";
    let problems = broken(path, |t| t.replace("compensation = \"host.release\"", "compensation = \"host.unisolate\""));
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].line, Some(line_of(&original(path), "compensation = \"host.release\"")));
    assert_eq!(problems[0].message, "compensation of `host.isolate` names a missing action `host.unisolate`");
}

#[test]
fn duplicate_assets_across_toml_and_csv() {
    let problems = broken("assets.csv", |t| format!("{t}host,web-42,tier3,prod,team:web,false,\n"));
    assert!(problems.iter().any(|p| p.message == "duplicate asset `host:web-42`"), "{problems:?}");
}

#[test]
fn a_missing_catalog_and_stray_files_are_reported() {
    let mut files: Vec<SourceFile> = example_files().into_iter().filter(|f| f.path != "actions.toml").collect();
    files.push(SourceFile::new("cedar/rules.ceder", "forbid(principal, action, resource);"));
    let problems = Bundle::load(&files).unwrap_err().problems;
    let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert!(text.iter().any(|p| p.starts_with("actions.toml: missing")), "{text:?}");
    assert!(text.iter().any(|p| p.starts_with("cedar/rules.ceder: unexpected file")), "{text:?}");
}

#[test]
fn garbage_never_panics() {
    let samples = [
        "",
        "[[",
        "level = ",
        "\u{0}\u{1}",
        "[agent]\nid = 3",
        "[[action]]\nid = \"a.b\"",
        "permit(",
        "@level(\"4\") permit(principal, action, resource);",
    ];
    for path in ["actions.toml", "assets.toml", "assets.csv", "agents/phish-triage.toml", "cedar/network.cedar"] {
        for s in samples {
            let mut files = example_files();
            files.iter_mut().find(|f| f.path == path).unwrap().text = s.to_string();
            let _ = Bundle::load(&files);
        }
    }
}

#[test]
fn the_version_is_a_hash_of_the_policy_content_only() {
    let files = example_files();
    let a = Bundle::load(&files).unwrap();
    let mut reordered = files.clone();
    reordered.reverse();
    reordered.retain(|f| !f.path.starts_with("tests/"));
    let b = Bundle::load(&reordered).unwrap();
    assert_eq!(a.version(), b.version(), "order and tests/ do not change the version");
    assert!(a.version().starts_with("sha256:") && a.version().len() == 7 + 64);
    let mut edited = files;
    edited
        .iter_mut()
        .find(|f| f.path == "assets.csv")
        .unwrap()
        .text
        .push_str("host,lt-new,tier3,prod,team:workplace,false,\n");
    assert_ne!(Bundle::load(&edited).unwrap().version(), a.version());
}

/// The example bundle with the lab EDR upstream advise-only: its unmapped tools are advice,
/// recorded as `mcp.call` (an action the catalog gains).
fn advise_only_upstream() -> Vec<warden_core::SourceFile> {
    let mut files = example_files();
    for f in files.iter_mut() {
        if f.path == "actions.toml" {
            f.text.push_str(
                "\n[[action]]\nid = \"mcp.call\"\ndescription = \"An unmapped upstream tool\"\ncategory = \"enrichment\"\n\
                 risk = \"medium\"\nreversible = false\ntarget = \"mcp_tool\"\ntool = \"mcp\"\nowner = \"team:soc\"\n\
                 params = [{ name = \"arguments\", type = \"string\" }]\n",
            );
        }
        if f.path == "mcp.toml" {
            f.text = f.text.replace("unmapped = \"hidden\"", "unmapped = \"advise\"\nadvise_as = \"mcp.call\"");
        }
    }
    files
}

/// `mcp.toml` is checked with the bundle: mapped actions exist and fit, and an advise-only
/// action is granted as advice only.
#[test]
fn mcp_mappings_are_checked_against_the_catalog_and_the_grants() {
    let path = "mcp.toml";
    let problems = broken(path, |t| t.replace("action = \"process.kill\"", "action = \"process.kil\""));
    assert_eq!(problems[0].file, path);
    assert!(problems[0].message.contains("action `process.kil` is not in actions.toml"), "{}", problems[0]);

    // Unmapped tools as advice, under an action some agent is granted at level 2: refused.
    let mut files = advise_only_upstream();
    for f in files.iter_mut() {
        if f.path == "agents/enrichment-bot.toml" {
            f.text = f.text.replace("tools = [\"siem\"]", "tools = [\"siem\", \"mcp\"]");
            f.text.push_str("\n[[action]]\naction = \"mcp.call\"\nlevel = 2\n");
        }
    }
    let problems = Bundle::load(&files).unwrap_err().problems;
    assert!(
        problems
            .iter()
            .any(|p| p.file == "agents/enrichment-bot.toml" && p.message.contains("grant it at level 1, not 2")),
        "{problems:?}"
    );
    for f in files.iter_mut().filter(|f| f.path == "agents/enrichment-bot.toml") {
        f.text = f.text.replace("action = \"mcp.call\"\nlevel = 2", "action = \"mcp.call\"\nlevel = 1");
    }
    let bundle = Bundle::load(&files).expect("granted as advice: valid");
    assert_eq!(bundle.mcp().unmapped("lab-edr"), &warden_core::mcp_map::Unmapped::Advise { action: "mcp.call".into() });
}

/// An advise-only upstream's action granted above level 1 by a hand-written Cedar permit is
/// refused as a guardrail grant is (issue 23): the permit's file and line are named.
#[test]
fn a_cedar_permit_cannot_lift_advice_above_level_one() {
    let mut files = advise_only_upstream();
    for f in files.iter_mut() {
        if f.path == "cedar/network.cedar" {
            f.text.push_str(
                "\n@id(\"lift-advice\")\n@owner(\"team:x\")\n@level(\"3\")\npermit (principal, action == Warden::Action::\"mcp.call\", resource);\n",
            );
        }
    }
    let problems = Bundle::load(&files).unwrap_err().problems;
    assert!(
        problems.iter().any(|p| p.file == "cedar/network.cedar"
            && p.line.is_some()
            && p.message.contains("`lift-advice` grants `mcp.call` at level 3")),
        "{problems:?}"
    );
}

/// A connector call that does not carry the decided target is refused at its line; declared
/// unbound with a reason, the action may be granted at most level 2 (issue 23).
#[test]
fn connectors_must_carry_the_decided_target() {
    let path = "connectors.toml";
    let unbound = |t: &str| {
        t.replace("path = \"/edr/v1/hosts/{target.id}/contain\"", "path = \"/edr/v1/hosts/{params.reason}/contain\"")
    };
    let problems = broken(path, unbound);
    let files = example_files();
    let text = &files.iter().find(|f| f.path == path).unwrap().text;
    let line = line_of(text, "[actions.\"host.isolate\"]");
    assert_eq!((problems[0].file.as_str(), problems[0].line), (path, Some(line)), "{problems:?}");
    assert!(problems[0].message.contains("does not carry the decided target"), "{}", problems[0]);
    // Declared, with a reason: edr-responder's level 3 grant of host.isolate is now refused.
    let problems = broken(path, |t| {
        unbound(t).replace(
            "path = \"/edr/v1/hosts/{params.reason}/contain\"",
            "path = \"/edr/v1/hosts/{params.reason}/contain\"\ntarget_bound = false\ntarget_bound_reason = \"the EDR takes a batch\"",
        )
    });
    assert!(
        problems.iter().any(|p| p.file == "agents/edr-responder.toml" && p.message.contains("at most level 2")),
        "{problems:?}"
    );
    // A param a Cedar rule reads must be sent.
    let problems = broken(path, |t| t.replace(", duration_minutes = \"{params.duration_minutes}\"", ""));
    assert!(problems.iter().any(|p| p.message.contains("param `duration_minutes`")), "{problems:?}");
}

/// The inventory has one spelling per asset: ids are made canonical, an id that has none is
/// refused, and aliases name the asset itself.
#[test]
fn inventory_ids_are_canonical_and_aliases_name_the_asset() {
    let problems = broken("assets.toml", |t| t.replacen("id = \"web-02\"", "id = \"web\u{200b}-02\"", 1));
    assert!(problems.iter().any(|p| p.message.contains("U+200B")), "{problems:?}");
    let mut files = example_files();
    for f in files.iter_mut().filter(|f| f.path == "assets.toml") {
        f.text =
            f.text.replacen("id = \"breakglass-01\"", "id = \"BreakGlass-01\"\naliases = [\"bg01@ACME.example\"]", 1);
    }
    let bundle = Bundle::load(&files).unwrap();
    let by_alias = bundle.inventory().get(&"account:bg01@acme.example".parse().unwrap()).expect("the alias");
    assert_eq!(by_alias.id, "breakglass-01", "stored in its canonical form");
    assert!(bundle.inventory().get(&"account:BREAKGLASS-01".parse().unwrap()).is_some());
}

#[test]
fn data_classes_and_labels_are_checked() {
    let path = "actions.toml";
    let problems = broken(path, |t| {
        t.replacen("reads = [\"email.headers\"]", "reads = [\"Email Headers\", \"netflow\", \"netflow\"]", 1)
    });
    let messages: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
    assert!(messages.iter().any(|m| m.contains("`Email Headers` must be dot-separated")), "{messages:?}");
    assert!(messages.iter().any(|m| m.contains("`netflow` is listed twice")), "{messages:?}");
    assert_eq!(problems[0].line, Some(line_of(&original(path), "reads = [\"email.headers\"]")));
    let with_result = |result: &'static str| {
        move |t: &str| t.replacen("reads = [\"netflow\"]", &format!("reads = [\"netflow\"]\nresult = {result}"), 1)
    };
    let problems = broken(path, with_result("{ integrity = \"dubious\" }"));
    assert!(problems[0].message.contains("dubious"), "{}", problems[0]);
    let problems = broken(path, with_result("{ trust = \"low\" }"));
    assert!(problems[0].message.contains("trust"), "{}", problems[0]);
    let path = "agents/phish-triage.toml";
    let problems = broken(path, |t| t.replace("\"email.body\"", "\"email body\""));
    assert!(problems[0].message.contains("`[data] allowed`: data class `email body`"), "{}", problems[0]);
    assert_eq!(problems[0].file, path);
    let path = "mcp.toml";
    let problems =
        broken(path, |t| t.replacen("action = \"host.isolate\"", "action = \"host.isolate\"\nreads = [\"EDR\"]", 1));
    assert!(problems[0].message.contains("data class `EDR`"), "{}", problems[0]);
}
