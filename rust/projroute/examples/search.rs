//! Build an answer index from a text file (one answer a line) with a static model,
//! then answer queries read from stdin, one a line.
//!
//! ```text
//! cargo run --release -p projroute --features text --example search -- \
//!     STATIC_MODEL_DIR CORPUS.txt [--model MODEL.safetensors] [--index OUT.index] [-k 5]
//! ```
//!
//! `STATIC_MODEL_DIR` is a model2vec folder, for example one written by
//! `projroute static distill --vocab-only -o DIR`. With `--model`, queries are
//! projected by that projroute model (its `dim_out` must be the static model's
//! dimension, as answers are embedded by the static model). With `--index`, the index
//! is also written to that file (`projroute search OUT.index "text"` reads it).

use std::io::BufRead;
use std::path::PathBuf;

use projroute::{Projector, Searcher, StaticEncoder};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (mut positional, mut model, mut out, mut k) = (Vec::new(), None, None, 5usize);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--model" => model = args.next().map(PathBuf::from),
            "--index" => out = args.next().map(PathBuf::from),
            "-k" => k = args.next().ok_or("-k needs a number")?.parse()?,
            _ => positional.push(a),
        }
    }
    let [encoder_dir, corpus] = <[String; 2]>::try_from(positional)
        .map_err(|_| "usage: search STATIC_MODEL_DIR CORPUS.txt [--model MODEL] [--index OUT] [-k K]")?;

    let encoder = StaticEncoder::from_dir(&encoder_dir)?;
    let text = std::fs::read_to_string(&corpus)?;
    let answers: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let start = std::time::Instant::now();
    let mut index = Searcher::build_index(&encoder, &answers, None)?;
    eprintln!("embedded {} answers ({}-d) in {:.1?}", index.len(), index.dim(), start.elapsed());
    if let Some(out) = &out {
        index.encoder = Some(std::fs::canonicalize(&encoder_dir)?.display().to_string());
        index.model = model.as_ref().map(std::fs::canonicalize).transpose()?.map(|p| p.display().to_string());
        index.save(out)?;
        eprintln!("wrote {}", out.display());
    }
    let projector = model.map(Projector::load).transpose()?;
    let searcher = Searcher::new(encoder, projector, index)?;
    let k = k.min(searcher.len());

    eprintln!("type a query per line (Ctrl-D to stop)");
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let start = std::time::Instant::now();
        let hits = searcher.search(&[line.as_str()], k)?.remove(0);
        println!("{} ({:.2?})", line.trim(), start.elapsed());
        if hits.is_empty() {
            println!("  no known word in the query");
        }
        for (rank, hit) in hits.iter().enumerate() {
            println!("  {:>2}  {:.3}  [{}] {}", rank + 1, hit.score, hit.id, hit.text);
        }
    }
    Ok(())
}
