//! The STS-B sentences the text benches encode, shared by the criterion bench and the
//! `model2vec-rs` anchor (`#[path]`-included: benches have no library to share).

/// The first `n` sentences of an STS-B CSV file (`sentence1,sentence2,score`, both
/// sentence columns in order); a quoted field may hold commas and `""` escapes.
pub fn sentences(path: &str, n: usize) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let (mut fields, mut cur, mut quoted) = (Vec::new(), String::new(), false);
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match (c, quoted) {
                ('"', true) if chars.peek() == Some(&'"') => {
                    cur.push('"');
                    chars.next();
                }
                ('"', _) => quoted = !quoted,
                (',', false) => fields.push(std::mem::take(&mut cur)),
                _ => cur.push(c),
            }
        }
        fields.push(cur);
        out.extend(fields.into_iter().take(2));
        if out.len() >= n {
            break;
        }
    }
    out.truncate(n);
    Ok(out)
}
