//! A property test of the whole loader: thousands of files made by mutating the real fleet
//! files in `fleets/` must each compile or fail with problems, never panic, and every problem
//! must point inside its file on a character boundary and render with miette's graphical
//! handler.
//!
//! In: the fleet files, a fixed seed. Out: a failure naming the case (seed and index) and the
//! mutations that made it, so it can be replayed and turned into a regression test.

use std::panic::{catch_unwind, AssertUnwindSafe};

use miette::SourceSpan;

use super::{compile_bytes, Invalid, Limits};

const SEEDS: [(&str, &str); 4] = [
    (
        "distribution.yaml",
        include_str!("../../../fleets/distribution.yaml"),
    ),
    (
        "ci-shared-runners.yaml",
        include_str!("../../../fleets/ci-shared-runners.yaml"),
    ),
    (
        "arm-builders.yaml",
        include_str!("../../../fleets/arm-builders.yaml"),
    ),
    (
        "mdis-wb31.yaml",
        include_str!("../../../fleets/mdis-wb31.yaml"),
    ),
];

/// Cases per run: enough to meet every mutation many times over, few enough to stay fast in a
/// debug build.
const CASES: u64 = 4_000;

/// SplitMix64: a tiny deterministic generator, so a failing case replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Text worth inserting: YAML punctuation, multi-byte characters, interpolation and secrets.
const SNIPPETS: &[&str] = &[
    "\0",
    "\u{feff}",
    "é",
    "🦀",
    "東京",
    "# naïve café\n",
    "{",
    "}",
    "[",
    "]",
    ":",
    ": ",
    "- ",
    "&a ",
    "*a",
    "!!str ",
    "|\n",
    ">-\n",
    "'",
    "\"",
    "\t",
    "\r",
    "\r\n",
    "\n",
    "---\n",
    "...\n",
    "${secret:}",
    "${secret:A B}",
    "${secret:",
    "{env.nope}",
    "{n}",
    "{index}",
    "{",
    "\\",
    "\"\\u00e9\\x\"",
    "size: 2147483648\n",
    "count: 65536\n",
    "99999999999999999999",
    "<<: *a\n",
];

/// One mutation of `bytes`, described for the failure message.
fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) -> String {
    let at = rng.below(bytes.len() + 1);
    match rng.below(12) {
        0 if !bytes.is_empty() => {
            let at = at.min(bytes.len() - 1);
            let bit = 1u8 << rng.below(8);
            bytes[at] ^= bit;
            format!("flip bit {bit:#04x} at {at}")
        }
        1 => {
            bytes.truncate(at);
            format!("truncate at {at}")
        }
        2 => {
            // Anywhere, even inside a multi-byte character: that makes invalid UTF-8 too.
            let snippet = *rng.pick(SNIPPETS);
            bytes.splice(at..at, snippet.bytes());
            format!("insert {snippet:?} at {at}")
        }
        3 => {
            let number = *rng.pick(&[
                "0",
                "65536",
                "1000000",
                "2147483648",
                "4294967296",
                "18446744073709551616",
                "-1",
                "1e9",
            ]);
            let digits: Vec<usize> = (0..bytes.len())
                .filter(|&i| bytes[i].is_ascii_digit())
                .collect();
            if digits.is_empty() {
                return "no number to replace".to_string();
            }
            let start = *rng.pick(&digits);
            let end = (start..bytes.len())
                .find(|&i| !bytes[i].is_ascii_digit())
                .unwrap_or(bytes.len());
            bytes.splice(start..end, number.bytes());
            format!("number at {start} becomes {number}")
        }
        4 => {
            // An alias chain that doubles at every link: the billion laughs.
            let links = 5 + rng.below(30);
            let mut bomb = String::from("l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n");
            for link in 1..links {
                bomb.push_str(&format!(
                    "l{link}: &l{link} [*l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}]\n",
                    p = link - 1
                ));
            }
            bytes.extend_from_slice(bomb.as_bytes());
            format!("append an alias chain of {links} links")
        }
        5 => {
            let depth = 1 + rng.below(400);
            let nested = format!("deep: {}x{}\n", "[".repeat(depth), "]".repeat(depth));
            bytes.splice(line_start(bytes, at)..line_start(bytes, at), nested.bytes());
            format!("insert flow nesting {depth} deep at {at}")
        }
        6 => {
            let depth = 1 + rng.below(200);
            let mut nested = String::new();
            for level in 0..depth {
                nested.push_str(&format!("{}k{level}:\n", " ".repeat(level)));
            }
            bytes.extend_from_slice(nested.as_bytes());
            format!("append block nesting {depth} deep")
        }
        7 => {
            let length = *rng.pick(&[100, 1_000, 66_000, 70_000]);
            let key = format!("{}: 1\n", rng.pick(&["k", "é", "🦀"]).repeat(length));
            let start = line_start(bytes, at);
            bytes.splice(start..start, key.bytes());
            format!("insert a key of {length} characters at {start}")
        }
        8 => {
            // Another seed's line, which is valid somewhere but probably not here.
            let (_, other) = rng.pick(&SEEDS);
            let lines: Vec<&str> = other.lines().collect();
            let line = format!("{}\n", rng.pick(&lines));
            let start = line_start(bytes, at);
            bytes.splice(start..start, line.bytes());
            format!("insert line {line:?} at {start}")
        }
        9 => {
            let start = line_start(bytes, at);
            let end = bytes[start..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(bytes.len(), |i| start + i + 1);
            let line: Vec<u8> = bytes[start..end].to_vec();
            if rng.below(2) == 0 {
                bytes.drain(start..end);
                format!("delete the line at {start}")
            } else {
                bytes.splice(start..start, line);
                format!("repeat the line at {start}")
            }
        }
        10 => {
            let value = *rng.pick(&[
                "café",
                "Café",
                "東京",
                "${secret:}",
                "\"${secret:}\"",
                "{env.url}",
                "\"{env.nope}\"",
                "\"${secret:X{env}\"",
                "",
                "~",
                "[]",
                "{}",
                "*nope",
            ]);
            // Replace the value after the next `: `.
            let Some(colon) = find(bytes, at, b": ") else {
                return "no value to replace".to_string();
            };
            let end = bytes[colon..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(bytes.len(), |i| colon + i);
            bytes.splice(colon + 2..end, value.bytes());
            format!("value at {colon} becomes {value:?}")
        }
        _ => {
            let byte = rng.next() as u8;
            bytes.insert(at, byte);
            format!("insert byte {byte:#04x} at {at}")
        }
    }
}

fn line_start(bytes: &[u8], at: usize) -> usize {
    bytes[..at.min(bytes.len())]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1)
}

fn find(bytes: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    let from = from.min(bytes.len());
    bytes[from..]
        .windows(needle.len())
        .position(|window| window == needle)
        .map(|i| from + i)
}

/// Every span inside the text and on character boundaries; the report renders.
fn check_problems(invalid: &Invalid) -> Result<(), String> {
    for problem in &invalid.problems {
        let text = &problem.source.text;
        let spans: Vec<SourceSpan> = std::iter::once(problem.span)
            .chain(problem.secondary.iter().map(|(span, _)| *span))
            .collect();
        for span in spans {
            let (start, end) = (span.offset(), span.offset() + span.len());
            if end > text.len() || !text.is_char_boundary(start) || !text.is_char_boundary(end) {
                return Err(format!(
                    "span {start}..{end} of `{}` is not on character boundaries of a {}-byte text",
                    problem.message,
                    text.len()
                ));
            }
        }
        problem.location();
    }
    let mut rendered = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .with_width(100)
        .render_report(&mut rendered, invalid)
        .map_err(|error| format!("the report did not render: {error}"))?;
    Ok(())
}

#[test]
fn mutated_fleet_files_never_panic_and_every_span_is_in_the_file() {
    // Small limits keep each case fast; what is checked is that they hold, not their size.
    let limits = Limits {
        file_bytes: 256 * 1024,
        alias_nodes: 5_000,
        pool_size: 40,
        matrix_combinations: 40,
        resources: 200,
    };
    for (name, text) in SEEDS {
        assert!(
            compile_bytes(name, text.as_bytes(), &limits).is_ok(),
            "{name} no longer compiles"
        );
    }
    let seed = 0x5EED_F1EE7;
    let mut rng = Rng(seed);
    let mut outcomes = [0usize; 2];
    for case in 0..CASES {
        let (name, text) = *rng.pick(&SEEDS);
        let mut bytes = text.as_bytes().to_vec();
        let mutations: Vec<String> = (0..1 + rng.below(3))
            .map(|_| mutate(&mut rng, &mut bytes))
            .collect();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            match compile_bytes(name, &bytes, &limits) {
                Ok(_) => Ok(true),
                Err(invalid) => check_problems(&invalid).map(|()| false),
            }
        }));
        match outcome {
            Ok(Ok(valid)) => outcomes[usize::from(valid)] += 1,
            Ok(Err(message)) => {
                panic!("case {case} (seed {seed:#x}, {name}: {mutations:?}): {message}")
            }
            Err(_) => panic!("case {case} (seed {seed:#x}, {name}: {mutations:?}) panicked"),
        }
    }
    // Most mutations break a file, some do not: both paths were taken.
    assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");
}

// ---- Findings and crashers, replayed through the whole loader.

/// The problems of compiling `bytes` under the default limits.
fn problems(bytes: &[u8]) -> Vec<super::Problem> {
    let invalid = compile_bytes("f.yaml", bytes, &Limits::default()).expect_err("compiled");
    check_problems(&invalid).expect("well-formed problems");
    invalid.problems
}

const HEAD: &str = "fleet: f\nclouds:\n  gcp: {project: p, region: us-east1}\ndefaults:\n  gcp: {zone: us-east1-c, image: i, machine_type: n1-standard-2}\n";

#[test]
fn a_nul_byte_is_an_error_at_its_byte_not_the_end_of_the_file() {
    let text = format!("{HEAD}# a\0 comment\nmanagers:\n  m-1: {{}}\n");
    let found = problems(text.as_bytes());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].kind, super::ProblemKind::Encoding);
    assert_eq!(found[0].span.offset(), text.find('\0').unwrap());
    assert_eq!(found[0].location(), "f.yaml:6:4");
}

#[test]
fn invalid_utf8_is_an_error_at_its_byte() {
    let mut bytes = format!("{HEAD}# caf").into_bytes();
    bytes.extend_from_slice(&[0xE9, b'\n', 0xFF, 0xFE, b'\n']);
    let found = problems(&bytes);
    // 0xFF and 0xFE cannot start a character, so each is a problem of its own.
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(found.iter().all(|p| p.kind == super::ProblemKind::Encoding));
    assert_eq!(found[0].location(), "f.yaml:6:6");
    assert_eq!(found[1].location(), "f.yaml:7:1");
    assert_eq!(found[2].location(), "f.yaml:7:2");
}

#[test]
fn a_problem_far_into_a_long_line_renders_without_a_snippet() {
    // miette's graphical handler panicked ("Formatting argument out of range") drawing a label
    // more than 65,535 columns into a line.
    let text = format!("{HEAD}{}: 1\n", "k".repeat(70_000));
    let found = problems(text.as_bytes());
    let mut rendered = String::new();
    miette::GraphicalReportHandler::new()
        .render_report(&mut rendered, &found[0])
        .unwrap();
    assert!(rendered.contains("at f.yaml:6:70001"), "{rendered}");
    assert!(rendered.len() < 2_000, "{} bytes", rendered.len());
}

#[test]
fn sizes_are_refused_at_the_value_before_anything_is_expanded() {
    for (text, at) in [
        (
            format!("{HEAD}pools:\n  p-{{n}}:\n    size: 2147483648\n"),
            "f.yaml:8:11",
        ),
        (
            format!("{HEAD}pools:\n  p-{{n}}:\n    size: 1000000\n"),
            "f.yaml:8:11",
        ),
        (
            format!("{HEAD}managers:\n  m-{{n}}:\n    matrix: {{count: 65536}}\n"),
            "f.yaml:8:21",
        ),
        (
            format!("{HEAD}pools:\n  p-{{n}}:\n    size: 99999999999\n"),
            "f.yaml:8:11",
        ),
    ] {
        let found = problems(text.as_bytes());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].kind, super::ProblemKind::Limit, "{found:?}");
        assert_eq!(found[0].location(), at);
    }
}

#[test]
fn raised_limits_let_a_larger_fleet_through() {
    let text = format!("{HEAD}pools:\n  p-{{n}}:\n    size: 3\n");
    let small = Limits {
        pool_size: 2,
        ..Limits::default()
    };
    assert!(compile_bytes("f.yaml", text.as_bytes(), &small).is_err());
    let raised = Limits {
        pool_size: 3,
        resources: 3,
        ..Limits::default()
    };
    let desired = compile_bytes("f.yaml", text.as_bytes(), &raised).expect("valid");
    assert_eq!(desired.resources.len(), 3);
    let fleet_of_two = Limits {
        resources: 2,
        ..Limits::default()
    };
    let invalid = compile_bytes("f.yaml", text.as_bytes(), &fleet_of_two).unwrap_err();
    assert!(invalid.problems[0]
        .message
        .contains("more than 2 resources"));
}

#[test]
fn secret_references_must_name_a_secret() {
    let text = format!(
        "{HEAD}managers:\n  m-1:\n    service_account: fleet-manager@my-project.iam.gserviceaccount.com\n    runner: {{version: \"16.11.1\"}}\n    runners:\n      - {{name: a, token: \"${{secret:}}\"}}\n      - {{name: b, token: \"${{secret:OK_{{n}}}}\", url: \"https://x.example/${{HOME}}\"}}\n"
    );
    let found = problems(text.as_bytes());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].message, "Empty secret name");
    assert_eq!(found[0].location(), "f.yaml:11:27");
    let span = found[0].span;
    assert_eq!(
        &text[span.offset()..span.offset() + span.len()],
        "${secret:}"
    );
}

#[test]
fn label_values_follow_googles_rule_for_international_characters() {
    for (value, valid) in [
        ("café", true),
        ("東京", true),
        ("straße", true),
        ("x-1_2", true),
        ("", true),
        ("Café", false),
        ("a b", false),
        ("é.", false),
    ] {
        let text = format!("{HEAD}managers:\n  m-1: {{labels: {{team: \"{value}\"}}}}\n");
        let result = compile_bytes("f.yaml", text.as_bytes(), &Limits::default());
        assert_eq!(result.is_ok(), valid, "{value:?}: {result:?}");
    }
    let long = format!(
        "{HEAD}managers:\n  m-1: {{labels: {{team: {}}}}}\n",
        "é".repeat(64)
    );
    assert!(compile_bytes("f.yaml", long.as_bytes(), &Limits::default()).is_err());
    let longest = format!(
        "{HEAD}managers:\n  m-1: {{labels: {{team: {}}}}}\n",
        "é".repeat(63)
    );
    assert!(compile_bytes("f.yaml", longest.as_bytes(), &Limits::default()).is_ok());
}

#[test]
fn a_value_missing_in_one_environment_is_one_problem_naming_it() {
    let runners = "    runner: {version: \"16.11.1\"}\n    runners:\n      - {name: a, url: \"{env.url}\"}\n      - {name: b, url: \"{env.url}\"}\n";
    let text = format!(
        "{HEAD}environments:\n  com: {{url: \"https://u.example\"}}\n  dev: {{}}\nmanagers:\n  m-{{env}}-{{n}}:\n    matrix: {{env: [com, dev], count: 3}}\n{runners}"
    );
    let found = problems(text.as_bytes());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        found[0].message,
        "`{env.url}` is not set for environment `dev`"
    );
    assert!(
        found[0].label.ends_with("also used on line 15"),
        "{found:?}"
    );
    // Without `environments:` at all, it is an unknown variable, as before.
    let text = format!("{HEAD}managers:\n  m-{{env}}:\n    matrix: {{env: [com]}}\n{runners}");
    let found = problems(text.as_bytes());
    assert!(
        found
            .iter()
            .any(|p| p.message == "Unknown variable `{env.url}`"),
        "{found:?}"
    );
}
