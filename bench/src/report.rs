//! The side-by-side table.

#[derive(Debug, Clone)]
pub enum Val {
    Num(f64, usize),
    Text(String),
}

#[derive(Debug, Clone)]
pub struct Row {
    pub metric: String,
    pub val: Val,
}

impl Row {
    pub fn num(metric: &str, v: f64, decimals: usize) -> Row {
        Row {
            metric: metric.to_string(),
            val: Val::Num(v, decimals),
        }
    }
    pub fn text(metric: &str, v: String) -> Row {
        Row {
            metric: metric.to_string(),
            val: Val::Text(v),
        }
    }
}

/// One workload's results for every column (target, or Redis set-up) that
/// ran it, by column label.
pub struct Section {
    pub workload: String,
    pub results: Vec<(String, Result<Vec<Row>, String>)>,
}

fn fmt_val(v: &Val) -> String {
    match v {
        Val::Num(x, d) => {
            let s = format!("{:.*}", d, x);
            group(&s)
        }
        Val::Text(t) => t.clone(),
    }
}

/// 1234567.5 -> 1,234,567.5
fn group(s: &str) -> String {
    let (sign, rest) = s.strip_prefix('-').map(|r| ("-", r)).unwrap_or(("", s));
    let (int, frac) = rest
        .split_once('.')
        .map(|(a, b)| (a, Some(b)))
        .unwrap_or((rest, None));
    let mut out = String::new();
    for (i, ch) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    match frac {
        Some(f) => format!("{sign}{out}.{f}"),
        None => format!("{sign}{out}"),
    }
}

/// A markdown table: workload | metric | one column per label in `cols` |
/// the ratio of column `ratio.0` to column `ratio.1`, if asked for.
pub fn table(cols: &[&str], ratio: Option<(usize, usize)>, sections: &[Section]) -> String {
    let ratio = ratio.filter(|&(a, b)| a != b && a < cols.len() && b < cols.len());
    let mut head = vec!["workload".to_string(), "metric".to_string()];
    head.extend(cols.iter().map(|c| c.to_string()));
    if let Some((a, b)) = ratio {
        head.push(format!("ratio {}/{}", cols[a], cols[b]));
    }
    let mut lines: Vec<Vec<String>> = Vec::new();
    for s in sections {
        // Metric order: as the first target that has rows lists them.
        let mut metrics: Vec<String> = Vec::new();
        for (_, r) in &s.results {
            if let Ok(rows) = r {
                for row in rows {
                    if !metrics.contains(&row.metric) {
                        metrics.push(row.metric.clone());
                    }
                }
            }
        }
        let get = |col: &str, m: &str| -> Option<Val> {
            s.results
                .iter()
                .find(|(c, _)| c == col)
                .and_then(|(_, r)| match r {
                    Ok(rows) => rows
                        .iter()
                        .find(|row| row.metric == m)
                        .map(|row| row.val.clone()),
                    Err(_) => None,
                })
        };
        let mut first = true;
        if metrics.is_empty() {
            metrics.push("(failed)".into());
        }
        for m in &metrics {
            let mut line = vec![
                if first {
                    s.workload.clone()
                } else {
                    String::new()
                },
                m.clone(),
            ];
            first = false;
            let vals: Vec<Option<Val>> = cols.iter().map(|c| get(c, m)).collect();
            for (i, v) in vals.iter().enumerate() {
                line.push(match v {
                    Some(v) => fmt_val(v),
                    None => match s.results.iter().find(|(c, _)| c == cols[i]) {
                        Some((_, Err(e))) => format!("failed: {}", e.lines().next().unwrap_or("")),
                        _ => "—".into(),
                    },
                });
            }
            if let Some((a, b)) = ratio {
                line.push(match (&vals[a], &vals[b]) {
                    (Some(Val::Num(a, _)), Some(Val::Num(b, _))) if *b != 0.0 && *a != 0.0 => {
                        format!("{:.2}", a / b)
                    }
                    _ => "—".into(),
                });
            }
            lines.push(line);
        }
    }
    let widths: Vec<usize> = (0..head.len())
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .chain([head[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let fmt_line = |l: &[String]| -> String {
        let cells: Vec<String> = l
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = widths[i] - c.chars().count();
                if i >= 2 {
                    format!("{}{}", " ".repeat(pad), c)
                } else {
                    format!("{}{}", c, " ".repeat(pad))
                }
            })
            .collect();
        format!("| {} |", cells.join(" | "))
    };
    let mut out = fmt_line(&head);
    out.push('\n');
    let sep: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if i >= 2 {
                format!("{}:", "-".repeat(w.saturating_sub(1)))
            } else {
                "-".repeat(*w)
            }
        })
        .collect();
    out.push_str(&format!("| {} |\n", sep.join(" | ")));
    for l in &lines {
        out.push_str(&fmt_line(l));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping() {
        assert_eq!(group("1234567.50"), "1,234,567.50");
        assert_eq!(group("-1234"), "-1,234");
        assert_eq!(group("999"), "999");
    }

    #[test]
    fn table_has_ratio_and_missing_cells() {
        let s = Section {
            workload: "w".into(),
            results: vec![
                (
                    "nginx-sse".into(),
                    Ok(vec![Row::num("a", 2.0, 1), Row::text("b", "x".into())]),
                ),
                ("nchan".into(), Ok(vec![Row::num("a", 8.0, 1)])),
            ],
        };
        let t = table(&["nginx-sse", "nchan"], Some((0, 1)), &[s]);
        assert!(
            t.contains("| w        | a      |       2.0 |   8.0 |                  0.25 |"),
            "{t}"
        );
        assert!(
            t.contains("| -------- | ------ | --------: | ----: | --------------------: |"),
            "{t}"
        );
        assert!(t.contains("x |     — |"), "{t}");
    }

    #[test]
    fn ratio_of_chosen_columns() {
        let s = Section {
            workload: "w".into(),
            results: vec![
                ("one".into(), Ok(vec![Row::num("a", 4.0, 0)])),
                ("two".into(), Ok(vec![Row::num("a", 1.0, 0)])),
                ("three".into(), Err("boom\nmore".into())),
            ],
        };
        let t = table(&["one", "two", "three"], Some((1, 0)), &[s]);
        assert!(
            t.starts_with("| workload | metric | one | two |        three | ratio two/one |"),
            "{t}"
        );
        assert!(
            t.contains("|   4 |   1 | failed: boom |          0.25 |"),
            "{t}"
        );
        let s = Section {
            workload: "w".into(),
            results: vec![("one".into(), Ok(vec![Row::num("a", 4.0, 0)]))],
        };
        assert!(!table(&["one"], Some((0, 1)), &[s]).contains("ratio"));
    }
}
