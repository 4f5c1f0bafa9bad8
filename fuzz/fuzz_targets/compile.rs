//! Any bytes through the whole loader: `spec::compile_bytes` must return (never panic, never
//! allocate without bound), every problem must point inside the file on a character
//! boundary, and the report must render with miette's graphical handler, as the CLI prints it.
//!
//!   cargo +nightly fuzz run compile fuzz/corpus/compile fleets -- -max_total_time=60
//!
//! (from the repository root; new inputs go to `fuzz/corpus/compile`, `fleets/` seeds it).
#![no_main]

use fleet_engine::spec::{compile_bytes, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    // Small limits keep each run fast; what is fuzzed is that limits hold, not their size.
    let limits = Limits {
        file_bytes: 64 * 1024,
        alias_nodes: 2_000,
        pool_size: 20,
        matrix_combinations: 20,
        resources: 100,
    };
    if let Err(invalid) = compile_bytes("fuzz.yaml", bytes, &limits) {
        for problem in &invalid.problems {
            let text = &problem.source.text;
            let spans = std::iter::once(problem.span)
                .chain(problem.secondary.iter().map(|(span, _)| *span));
            for span in spans {
                let end = span.offset() + span.len();
                assert!(end <= text.len(), "{problem:?}");
                assert!(text.is_char_boundary(span.offset()), "{problem:?}");
                assert!(text.is_char_boundary(end), "{problem:?}");
            }
            let _ = problem.location();
        }
        let mut rendered = String::new();
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
            .with_width(100)
            .render_report(&mut rendered, &invalid)
            .expect("the report renders");
    }
});
