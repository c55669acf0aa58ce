//! projroute's `StaticEncoder` against `model2vec-rs` on one model2vec folder: the
//! STS-B test sentences (both columns, the first 1,024), encoded as one batch of 1,024
//! and as 1,024 single-text calls, median of repeated rounds, the two encoders'
//! rounds alternating (so that load from other jobs falls on both alike). Prints one
//! line per measurement and a JSON summary. Threads: rayon's global pool
//! (RAYON_NUM_THREADS), shared by both.

#[path = "../../../rust/projroute/benches/common/stsb.rs"]
mod stsb;

use std::time::{Duration, Instant};

use model2vec_rs::model::StaticModel;
use projroute::StaticEncoder;

/// Median seconds of `a` and of `b`, timed in alternating rounds.
fn medians(mut a: impl FnMut(), mut b: impl FnMut(), min_time: Duration, min_rounds: usize) -> (f64, f64) {
    for _ in 0..3 {
        a();
        b();
    }
    let time = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64()
    };
    let (start, mut ta, mut tb) = (Instant::now(), Vec::new(), Vec::new());
    while ta.len() < min_rounds || start.elapsed() < min_time {
        ta.push(time(&mut a));
        tb.push(time(&mut b));
    }
    let median = |mut t: Vec<f64>| {
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    (median(ta), median(tb))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).expect("usage: model2vec-rs-anchor MODEL_DIR [STSB_TEST_CSV]");
    let data = std::env::var("PROJROUTE_DATA").unwrap_or_else(|_| "../shared/data".into());
    let csv = args.get(2).cloned().unwrap_or_else(|| format!("{data}/stsb/test.csv"));
    let texts = stsb::sentences(&csv, 1024).unwrap_or_else(|e| panic!("{e}"));
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let ours = StaticEncoder::from_dir(dir).expect("projroute StaticEncoder");
    let theirs = StaticModel::from_pretrained(dir, None, None, None).expect("model2vec-rs StaticModel");
    let max_length = ours.max_length();

    // Same vectors (within float rounding) before timing anything.
    let a = ours.encode(&refs).unwrap();
    let b = theirs.encode_flat_with_args(&texts, max_length);
    let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    println!("{} sentences, dim {}, max |projroute - model2vec-rs| = {diff:.2e}", texts.len(), ours.dim());
    println!("rayon threads: {}", rayon::current_num_threads());

    let batch = Duration::from_secs(6);
    let single = Duration::from_secs(4);
    let (ours_b1024, theirs_b1024) = medians(
        || drop(ours.encode(&refs).unwrap()),
        || drop(theirs.encode_flat_with_args(&texts, max_length)),
        batch,
        20,
    );
    let (mut i, mut j) = (0usize, 0usize);
    let (ours_b1, theirs_b1) = medians(
        || {
            i += 1;
            drop(ours.encode(&refs[i % refs.len()..][..1]).unwrap())
        },
        || {
            j += 1;
            drop(theirs.encode_flat_with_args(&texts[j % texts.len()..][..1], max_length))
        },
        single,
        1000,
    );
    let n = texts.len() as f64;
    for (name, b1024, b1) in [("projroute", ours_b1024, ours_b1), ("model2vec-rs", theirs_b1024, theirs_b1)] {
        println!(
            "{name:13} B=1024 median {:8.3} ms ({:9.0} sentences/s)   B=1 median {:7.2} us",
            b1024 * 1e3,
            n / b1024,
            b1 * 1e6
        );
    }
    println!(
        "projroute / model2vec-rs speed: {:.2}x at B=1024, {:.2}x at B=1",
        theirs_b1024 / ours_b1024,
        theirs_b1 / ours_b1
    );
    println!(
        "{{\"projroute_b1024_s\": {ours_b1024:e}, \"model2vec_rs_b1024_s\": {theirs_b1024:e}, \
         \"projroute_b1_s\": {ours_b1:e}, \"model2vec_rs_b1_s\": {theirs_b1:e}, \"max_abs_diff\": {diff:e}}}"
    );
}
