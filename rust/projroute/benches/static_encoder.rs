//! criterion benches of the text side (feature `text`): the static encoder on 1,024
//! STS-B test sentences, as one batch and one sentence a call, and text to top-10
//! through the `Searcher` over 10,000 random unit answers.
//!
//! The model: the model2vec folder in `PROJROUTE_STATIC_MODEL`, or else one written
//! here (MiniLM's `tokenizer.json` from `PROJROUTE_TOKENIZER`, a random 256-d float32
//! table, `"normalize": true`; speed does not depend on the values). Sentences:
//! `$PROJROUTE_DATA/stsb/test.csv` (default `../shared/data`). Without either the bench
//! prints why and measures nothing.
//!
//!   RAYON_NUM_THREADS=2 PROJROUTE_TOKENIZER=.../tokenizer.json \
//!     cargo bench -p projroute --features text --bench static_encoder

#[path = "common/stsb.rs"]
mod stsb;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use criterion::{criterion_group, Criterion, Throughput};
use ndarray::Array2;
use projroute::{AnswerIndex, Searcher, StaticEncoder};
use safetensors::tensor::{Dtype, TensorView};

const N_SENTENCES: usize = 1024;
const DIM: usize = 256;
const N_ANSWERS: usize = 10_000;

fn lcg(seed: u64) -> impl FnMut() -> f32 {
    let mut s = seed;
    move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }
}

/// The model folder: `PROJROUTE_STATIC_MODEL`, or one written into `tmp` around
/// `PROJROUTE_TOKENIZER`; `Err` says why there is none.
fn model_dir(tmp: &Path) -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var("PROJROUTE_STATIC_MODEL") {
        return Ok(PathBuf::from(dir));
    }
    let tok = std::env::var("PROJROUTE_TOKENIZER")
        .map_err(|_| "set PROJROUTE_STATIC_MODEL (a model2vec folder) or PROJROUTE_TOKENIZER (a tokenizer.json)")?;
    let n = tokenizers::Tokenizer::from_file(&tok).map_err(|e| format!("{tok}: {e}"))?.get_vocab_size(true);
    std::fs::copy(&tok, tmp.join("tokenizer.json")).map_err(|e| format!("{tok}: {e}"))?;
    std::fs::write(tmp.join("config.json"), r#"{"model_type": "model2vec", "normalize": true, "max_length": 512}"#)
        .map_err(|e| e.to_string())?;
    let mut next = lcg(1);
    let bytes: Vec<u8> = (0..n * DIM).flat_map(|_| next().to_le_bytes()).collect();
    let view = TensorView::new(Dtype::F32, vec![n, DIM], &bytes).map_err(|e| e.to_string())?;
    let file =
        safetensors::serialize([("embeddings", view)], None::<HashMap<String, String>>).map_err(|e| e.to_string())?;
    std::fs::write(tmp.join("model.safetensors"), file).map_err(|e| e.to_string())?;
    Ok(tmp.to_path_buf())
}

/// The first `n` sentences of STS-B test (both columns).
fn sentences(n: usize) -> Result<Vec<String>, String> {
    let data = std::env::var("PROJROUTE_DATA")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data").to_string());
    stsb::sentences(&format!("{data}/stsb/test.csv"), n).map_err(|e| format!("{e} (set PROJROUTE_DATA)"))
}

fn text(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let (dir, texts) = match model_dir(tmp.path()).and_then(|d| Ok((d, sentences(N_SENTENCES)?))) {
        Ok(x) => x,
        Err(why) => {
            eprintln!("static_encoder benches skipped: {why}");
            return;
        }
    };
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let encoder = StaticEncoder::from_dir(&dir).expect("a model2vec folder");
    eprintln!(
        "static_encoder benches: model {} (dim {}), {} sentences, {} rayon threads",
        dir.display(),
        encoder.dim(),
        texts.len(),
        rayon::current_num_threads()
    );

    let mut group = c.benchmark_group("static_encode");
    group.throughput(Throughput::Elements(texts.len() as u64));
    group.bench_function(format!("b{}", texts.len()), |b| b.iter(|| encoder.encode(&texts).unwrap()));
    group.bench_function(format!("b1_x{}", texts.len()), |b| {
        b.iter(|| texts.chunks(1).map(|t| encoder.encode(t).unwrap().len()).sum::<usize>())
    });
    group.finish();

    let mut next = lcg(2);
    let answers = Array2::from_shape_simple_fn((N_ANSWERS, encoder.dim()), &mut next);
    let names = (0..N_ANSWERS).map(|i| format!("answer {i}")).collect();
    let index = AnswerIndex::new(answers, (0..N_ANSWERS as i64).collect(), names).unwrap();
    let searcher = Searcher::new(encoder, None, index).unwrap();
    let mut group = c.benchmark_group(format!("text_top10_n{N_ANSWERS}"));
    let mut i = 0;
    group.throughput(Throughput::Elements(1));
    group.bench_function("b1", |b| {
        b.iter(|| {
            i = (i + 1) % texts.len();
            searcher.search(&texts[i..i + 1], 10).unwrap()
        })
    });
    group.throughput(Throughput::Elements(texts.len() as u64));
    group.sample_size(10);
    group.bench_function(format!("b{}", texts.len()), |b| b.iter(|| searcher.search(&texts, 10).unwrap()));
    group.finish();
}

criterion_group!(benches, text);

fn main() {
    eprintln!("{}", projroute::cpu::describe());
    benches();
    Criterion::default().configure_from_args().final_summary();
}
