use crate::warden;

#[test]
fn the_demo_runs_every_scenario_as_scripted() {
    let out = warden().arg("demo").assert().success().get_output().stdout.clone();
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("Warden demo — policy bundle sha256:"));
    assert!(text.contains("10 scenarios decided as scripted."), "{text}");
    assert!(text.contains("cap       forbidden: forbidden by `dc-business-hours`"));
    assert!(text.contains("shadow    would have been execute"));
}

#[test]
fn the_demo_can_use_a_bundle_from_disk() {
    warden().args(["demo", "--policy"]).arg(crate::example_dir()).assert().success();
    warden().args(["demo", "--policy", "/nonexistent/bundle"]).assert().code(1);
}

#[test]
fn help_documents_the_exit_codes() {
    let out = warden().arg("--help").assert().success().get_output().stdout.clone();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("Exit codes: 0 ok, 1 failure, 2 denied or verification failed, 3 invalid input."));
}

#[test]
fn demo_transcript() {
    let out = warden().arg("demo").assert().success().get_output().stdout.clone();
    let text = String::from_utf8(out).unwrap();
    let version = text.split_whitespace().find(|w| w.starts_with("sha256:")).unwrap().to_string();
    insta::assert_snapshot!(text.replace(&version, "[bundle_version]"));
}
