//! The one parser of the Prometheus text exposition format.
//!
//! `Scrape::parse` is strict (a malformed line panics: the dashboards test relies on a
//! well-formed exposition); `metric_value` and `metric_sum` read leniently, skipping lines that
//! are not samples, as the one-value lookups always have.

use std::collections::{BTreeMap, BTreeSet, HashMap};

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    /// `# TYPE` lines: family name → counter, gauge, histogram, …
    pub types: HashMap<String, String>,
}

impl Scrape {
    /// Every sample and `# TYPE` line; panics on a malformed line.
    pub fn parse(text: &str) -> Scrape {
        Self::read(text, true)
    }

    /// Like `parse`, skipping malformed lines instead of panicking.
    pub fn parse_lenient(text: &str) -> Scrape {
        Self::read(text, false)
    }

    fn read(text: &str, strict: bool) -> Scrape {
        let mut s = Scrape::default();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                match (it.next(), it.next()) {
                    (Some(name), Some(kind)) => {
                        s.types.insert(name.to_owned(), kind.to_owned());
                    }
                    _ if strict => panic!("malformed TYPE line: {line}"),
                    _ => {}
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            match parse_sample(line) {
                Some(sample) => s.samples.push(sample),
                None if strict => panic!("malformed sample line: {line}"),
                None => {}
            }
        }
        s
    }

    /// The sum of every sample named `name` whose labels include all of `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// The value of the one sample of `series`, written `name{label="value",…}` as printed:
    /// that name with exactly those labels (in any order); 0 if absent.
    pub fn value(&self, series: &str) -> f64 {
        let (name, labels, rest) =
            parse_series(series).unwrap_or_else(|| panic!("malformed series {series:?}"));
        assert!(rest.trim().is_empty(), "malformed series {series:?}");
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == labels)
            .map_or(0.0, |s| s.value)
    }

    /// The label names carried by samples named `name`.
    pub fn label_names(&self, name: &str) -> BTreeSet<String> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .flat_map(|s| s.labels.keys().cloned())
            .collect()
    }

    /// The values label `label` takes on samples named `name`.
    pub fn label_values(&self, name: &str, label: &str) -> BTreeSet<String> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter_map(|s| s.labels.get(label).cloned())
            .collect()
    }
}

/// The value of one series (`name{labels}` as printed, labels in any order) in an exposition,
/// 0 if absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    Scrape::parse_lenient(text).value(series)
}

/// Sum of every sample of `name` whose labels include all of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    Scrape::parse_lenient(text).sum(name, labels)
}

/// `name{key="value",…} value`; `None` if malformed.
fn parse_sample(line: &str) -> Option<Sample> {
    let (name, labels, rest) = parse_series(line)?;
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The series at the start of `s`, `name` or `name{key="value",…}` (values unescaped): the
/// name, the labels and what follows them; `None` if the label set is malformed.
fn parse_series(s: &str) -> Option<(String, BTreeMap<String, String>, &str)> {
    let name_end = s.find(['{', ' ']).unwrap_or(s.len());
    let name = s[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    let mut rest = &s[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let end = loop {
            // `}` or `key="value"` followed by `,` or `}`.
            match chars.peek() {
                Some(&(i, '}')) => break i + 1,
                None => return None,
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()? {
                    (_, '\\') => match chars.next()? {
                        (_, 'n') => value.push('\n'),
                        (_, c) => value.push(c),
                    },
                    (_, '"') => break,
                    (_, c) => value.push(c),
                }
            }
            labels.insert(key.trim().to_owned(), value);
            if let Some(&(_, ',')) = chars.peek() {
                chars.next();
            }
        };
        rest = &body[end..];
    }
    Some((name, labels, rest))
}
