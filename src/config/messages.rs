//! What a YAML parser message is about: its line and column, its own words, and the dotted
//! key it concerns (placed under the mappings that enclose it in the text). Shared by
//! `saln-pipe validate` and the Python package, so both name a problem the same way.

/// The line a parser message points at (`... line 5 ...`).
pub fn line_in_message(message: &str) -> Option<usize> {
    let at = message.find("line ")?;
    let digits: String = message[at + 5..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The column a parser message points at (`... column 9 ...`).
pub fn column_in_message(message: &str) -> Option<usize> {
    let at = message.find("column ")?;
    let digits: String = message[at + 7..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The parser's own words, without the `error: line L column C: ` prefix and the snippet
/// of the file that follows the first line.
pub fn short_message(message: &str) -> String {
    let first = message.lines().next().unwrap_or(message);
    let rest = first.strip_prefix("error: ").unwrap_or(first);
    match rest.split_once(": ") {
        Some((at, m)) if at.starts_with("line ") => m.to_string(),
        _ => rest.to_string(),
    }
}

/// The key written before `column` (1-based) on `line_text`: `size` in `  size: lots`.
fn key_before(line_text: &str, column: usize) -> Option<String> {
    let end = column.saturating_sub(1).min(line_text.len());
    let prefix = line_text.get(..end)?;
    let colon = prefix.rfind(':')?;
    let key: String = prefix[..colon]
        .chars()
        .rev()
        .take_while(|c| !matches!(c, ' ' | '\t' | '{' | ',' | '-'))
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    (!key.is_empty()).then_some(key)
}

/// The key a parser message is about, placed under the mappings that enclose it at `line`
/// of `text`: the unknown field it names (`selection.keep_ratoi`), the missing field under
/// the mapping it points at (`export.dir`), or else the key written before the column it
/// points at (`superbatch.size` for `size: lots`, `selection.policy` for an unknown variant).
pub fn key_in_message(message: &str, text: &str, line: Option<usize>) -> Option<String> {
    let field = |prefix: &str| {
        let at = message.find(prefix)? + prefix.len();
        let end = message[at..].find('`')?;
        Some(message[at..at + end].to_string())
    };
    let join = |a: String, b: String| if a.is_empty() { b } else { format!("{a}.{b}") };
    let pointed = || -> Option<String> {
        let line = line?;
        let line_text = text.lines().nth(line.checked_sub(1)?)?;
        let name = key_before(line_text, column_in_message(message)?)?;
        Some(join(
            parents_at(text, line, &name).unwrap_or_default(),
            name,
        ))
    };
    if let Some(name) = field("unknown field `") {
        let parents = line.and_then(|l| parents_at(text, l, &name));
        return Some(join(parents.unwrap_or_default(), name));
    }
    if let Some(name) = field("missing field `") {
        return Some(match pointed() {
            Some(mapping) => join(mapping, name),
            None => name,
        });
    }
    pointed()
}

/// The dotted path of the mappings that enclose the key `name` on line `line` (1-based) of
/// a block- or flow-style YAML `text`.
fn parents_at(text: &str, line: usize, name: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let target = *lines.get(line.checked_sub(1)?)?;
    let indent = |l: &str| l.len() - l.trim_start().len();
    let key_of = |l: &str| -> Option<String> {
        let t = l.trim_start().trim_start_matches("- ");
        let (k, _) = t.split_once(':')?;
        let k = k.trim();
        (!k.is_empty() && !k.starts_with('#') && !k.contains(' ')).then(|| k.to_string())
    };
    // Block mappings: walk up to the lines with less indentation.
    let mut path = Vec::new();
    let mut level = indent(target);
    for l in lines[..line - 1].iter().rev() {
        if l.trim().is_empty() || l.trim_start().starts_with('#') {
            continue;
        }
        if indent(l) < level {
            if let Some(k) = key_of(l) {
                path.push(k);
            }
            level = indent(l);
            if level == 0 {
                break;
            }
        }
    }
    path.reverse();
    // Flow mappings on the line itself: `selection: { rule: x, keep_ratoi: 1 }`.
    let upto = target
        .find(&format!("{name}:"))
        .or_else(|| target.find(name));
    if let Some(end) = upto {
        let mut stack: Vec<String> = Vec::new();
        let mut token = String::new();
        let mut last_key = String::new();
        for ch in target[..end].chars() {
            match ch {
                ':' => {
                    last_key = token.trim().trim_start_matches("- ").to_string();
                    token.clear();
                }
                '{' => {
                    stack.push(last_key.clone());
                    token.clear();
                }
                '}' => {
                    stack.pop();
                    token.clear();
                }
                ',' => token.clear(),
                c => token.push(c),
            }
        }
        path.extend(stack.into_iter().filter(|k| !k.is_empty()));
    }
    Some(path.join("."))
}
