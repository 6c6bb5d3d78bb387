//! The one output layer of the operator CLI. Every command that lists something describes its
//! rows once (a [`Column`] per field) and hands them here, so `-o table|wide|json|yaml|csv` and
//! `--no-headers` mean the same everywhere: `table` for people, `wide` with every column,
//! `json`/`yaml` the command's serialized view (snake_case keys), `csv` every column with
//! snake_case headers. A format a command cannot produce is refused with the list of those it
//! can, never silently replaced by a table.

use std::collections::BTreeMap;
use std::fmt;

use certfleet_common::model::format_time;
use certfleet_common::proto as pb;
use clap::{Args, ValueEnum};
use comfy_table::{Color, ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;

/// Output format of commands that print something.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Table for people, the essential columns.
    Table,
    /// Table with every column.
    Wide,
    /// JSON (an array of objects for listings).
    Json,
    /// YAML, the same document as JSON.
    Yaml,
    /// CSV with a header line, every column.
    Csv,
}

impl Format {
    /// Table or wide: output for people, where summaries and notes may follow the table.
    pub fn is_table(self) -> bool {
        matches!(self, Format::Table | Format::Wide)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.to_possible_value().expect("no skipped variants");
        f.write_str(v.get_name())
    }
}

/// `-o` and `--no-headers`, flattened into every command that prints something.
#[derive(Args, Clone, Copy, Debug)]
pub struct OutputArgs {
    /// Output format: table, wide (every column), json, yaml or csv.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Leave out the header line of table, wide and csv output (for scripts).
    #[arg(long)]
    pub no_headers: bool,
}

impl OutputArgs {
    /// Plain table output with headers (what a command prints by default).
    pub const TABLE: OutputArgs = OutputArgs {
        output: Format::Table,
        no_headers: false,
    };
}

/// Why something could not be printed.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The command has no rendering in this format.
    #[error("`{command}` cannot print -o {format}; it prints {supported}")]
    Unsupported {
        /// The command, e.g. `plan show`.
        command: &'static str,
        /// The format asked for.
        format: Format,
        /// The formats it can print, comma-separated.
        supported: String,
    },
    /// The view could not be serialized (a bug: views are plain data).
    #[error("serializing the output of `{command}` as {format}: {message}")]
    Serialize {
        /// The command.
        command: &'static str,
        /// json or yaml.
        format: Format,
        /// The serializer's message.
        message: String,
    },
}

/// How a cell is coloured in a table (never in csv, json or yaml).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    /// No colour.
    Plain,
    /// Healthy, succeeded.
    Good,
    /// Needs attention soon.
    Warn,
    /// Failed, expired, revoked.
    Bad,
    /// In progress.
    Busy,
    /// Undone (rolled back).
    Undone,
}

impl Tone {
    fn color(self) -> Option<Color> {
        match self {
            Tone::Plain => None,
            Tone::Good => Some(Color::Green),
            Tone::Warn => Some(Color::Yellow),
            Tone::Bad => Some(Color::Red),
            Tone::Busy => Some(Color::Cyan),
            Tone::Undone => Some(Color::Magenta),
        }
    }
}

/// One cell: its text and its tone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cell {
    /// What is printed.
    pub text: String,
    /// Its colour in a table.
    pub tone: Tone,
}

impl Cell {
    /// An uncoloured cell.
    pub fn plain(text: impl Into<String>) -> Cell {
        Cell {
            text: text.into(),
            tone: Tone::Plain,
        }
    }
    /// A coloured cell.
    pub fn toned(text: impl Into<String>, tone: Tone) -> Cell {
        Cell {
            text: text.into(),
            tone,
        }
    }
}

/// In which formats a column appears.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Show {
    /// table, wide and csv.
    All,
    /// wide and csv only.
    Wide,
    /// csv only (a machine form of a column the tables show differently).
    Csv,
    /// table and wide only (a human form of a csv-only column).
    Screen,
}

/// One column of a listing of rows of type `R`.
pub struct Column<R> {
    /// Table header (upper case).
    pub header: &'static str,
    /// CSV header (snake_case).
    pub key: &'static str,
    /// Where it appears.
    pub show: Show,
    /// The cell of a row.
    pub cell: fn(&R) -> Cell,
}

impl<R> Column<R> {
    /// A column shown in every format.
    pub const fn new(header: &'static str, key: &'static str, cell: fn(&R) -> Cell) -> Self {
        Column {
            header,
            key,
            show: Show::All,
            cell,
        }
    }
    /// The same column, shown only where `show` says.
    pub const fn only(mut self, show: Show) -> Self {
        self.show = show;
        self
    }
    fn in_format(&self, f: Format) -> bool {
        match f {
            Format::Table => matches!(self.show, Show::All | Show::Screen),
            Format::Wide => matches!(self.show, Show::All | Show::Wide | Show::Screen),
            Format::Csv => matches!(self.show, Show::All | Show::Wide | Show::Csv),
            Format::Json | Format::Yaml => false,
        }
    }
}

/// Renders a listing: `data` (the serialized view) for json and yaml, `rows` through
/// `columns` for table, wide and csv.
pub fn render_list<R>(
    out: &OutputArgs,
    command: &'static str,
    data: &impl Serialize,
    rows: &[R],
    columns: &[Column<R>],
) -> Result<String, OutputError> {
    match out.output {
        Format::Json | Format::Yaml => serialize(out.output, command, data),
        Format::Csv => {
            let cols: Vec<&Column<R>> = columns
                .iter()
                .filter(|c| c.in_format(Format::Csv))
                .collect();
            let mut s = String::new();
            if !out.no_headers {
                s.push_str(&cols.iter().map(|c| c.key).collect::<Vec<_>>().join(","));
                s.push('\n');
            }
            for r in rows {
                let line: Vec<String> = cols.iter().map(|c| csv_field(&(c.cell)(r).text)).collect();
                s.push_str(&line.join(","));
                s.push('\n');
            }
            Ok(s)
        }
        f @ (Format::Table | Format::Wide) => {
            let cols: Vec<&Column<R>> = columns.iter().filter(|c| c.in_format(f)).collect();
            let headers: Vec<&str> = cols.iter().map(|c| c.header).collect();
            let body: Vec<Vec<Cell>> = rows
                .iter()
                .map(|r| cols.iter().map(|c| (c.cell)(r)).collect())
                .collect();
            Ok(table(&headers, body, out.no_headers))
        }
    }
}

/// Prints a listing (see [`render_list`]).
pub fn print_list<R>(
    out: &OutputArgs,
    command: &'static str,
    data: &impl Serialize,
    rows: &[R],
    columns: &[Column<R>],
) -> Result<(), OutputError> {
    print!("{}", render_list(out, command, data, rows, columns)?);
    Ok(())
}

/// Renders one document (`plan show`, `inventory show`): `data` for json and yaml, the text
/// `human` makes for table and wide; csv is refused.
pub fn render_document(
    out: &OutputArgs,
    command: &'static str,
    data: &impl Serialize,
    human: impl FnOnce(&OutputArgs) -> String,
) -> Result<String, OutputError> {
    match out.output {
        Format::Json | Format::Yaml => serialize(out.output, command, data),
        Format::Table | Format::Wide => Ok(human(out)),
        Format::Csv => Err(unsupported(
            command,
            out.output,
            &[Format::Table, Format::Wide, Format::Json, Format::Yaml],
        )),
    }
}

/// Prints one document (see [`render_document`]).
pub fn print_document(
    out: &OutputArgs,
    command: &'static str,
    data: &impl Serialize,
    human: impl FnOnce(&OutputArgs) -> String,
) -> Result<(), OutputError> {
    print!("{}", render_document(out, command, data, human)?);
    Ok(())
}

/// The refusal of a format `command` cannot print.
pub fn unsupported(command: &'static str, format: Format, supported: &[Format]) -> OutputError {
    OutputError::Unsupported {
        command,
        format,
        supported: supported
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn serialize(
    format: Format,
    command: &'static str,
    data: &impl Serialize,
) -> Result<String, OutputError> {
    let err = |message: String| OutputError::Serialize {
        command,
        format,
        message,
    };
    match format {
        Format::Yaml => serde_norway::to_string(data).map_err(|e| err(e.to_string())),
        _ => serde_json::to_string_pretty(data)
            .map(|mut s| {
                s.push('\n');
                s
            })
            .map_err(|e| err(e.to_string())),
    }
}

/// A table of `rows` under `headers`, ending with a newline.
pub fn table(headers: &[&str], rows: Vec<Vec<Cell>>, no_headers: bool) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic);
    if !no_headers {
        t.set_header(headers.to_vec());
    }
    for row in rows {
        t.add_row(row.into_iter().map(|c| {
            let cell = comfy_table::Cell::new(c.text);
            match c.tone.color() {
                Some(color) => cell.fg(color),
                None => cell,
            }
        }));
    }
    format!("{t}\n")
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// A time for a view, `None` when unset (0).
pub fn when(secs: i64) -> Option<String> {
    (secs > 0).then(|| format_time(secs))
}

/// Labels as a sorted map.
pub fn labels_map(l: &[pb::Label]) -> BTreeMap<String, String> {
    l.iter().map(|l| (l.key.clone(), l.value.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Row {
        name: &'static str,
        note: &'static str,
    }

    fn columns() -> Vec<Column<Row>> {
        vec![
            Column::new("NAME", "name", |r: &Row| Cell::plain(r.name)),
            Column::new("NOTE", "note", |r: &Row| Cell::plain(r.note)).only(Show::Wide),
        ]
    }

    fn rows() -> Vec<Row> {
        vec![
            Row {
                name: "a",
                note: "x, \"y\"",
            },
            Row {
                name: "b",
                note: "",
            },
        ]
    }

    fn out(output: Format, no_headers: bool) -> OutputArgs {
        OutputArgs { output, no_headers }
    }

    #[test]
    fn csv_has_every_column_quoted_and_optional_headers() {
        let r = rows();
        let s = render_list(&out(Format::Csv, false), "t", &r, &r, &columns()).unwrap();
        assert_eq!(s, "name,note\na,\"x, \"\"y\"\"\"\nb,\n");
        let s = render_list(&out(Format::Csv, true), "t", &r, &r, &columns()).unwrap();
        assert_eq!(s, "a,\"x, \"\"y\"\"\"\nb,\n");
    }

    #[test]
    fn json_and_yaml_are_the_view() {
        let r = rows();
        let j = render_list(&out(Format::Json, false), "t", &r, &r, &columns()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v[1]["name"], "b");
        let y = render_list(&out(Format::Yaml, false), "t", &r, &r, &columns()).unwrap();
        let v: serde_json::Value = serde_norway::from_str(&y).unwrap();
        assert_eq!(v[0]["note"], "x, \"y\"");
    }

    #[test]
    fn wide_columns_only_in_wide() {
        let r = rows();
        let t = render_list(&out(Format::Table, false), "t", &r, &r, &columns()).unwrap();
        assert!(t.contains("NAME") && !t.contains("NOTE"), "{t}");
        let w = render_list(&out(Format::Wide, false), "t", &r, &r, &columns()).unwrap();
        assert!(w.contains("NOTE"), "{w}");
        let n = render_list(&out(Format::Table, true), "t", &r, &r, &columns()).unwrap();
        assert!(!n.contains("NAME"), "{n}");
    }

    #[test]
    fn documents_refuse_csv_naming_the_command() {
        let e = render_document(&out(Format::Csv, false), "plan show", &1, |_| String::new())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("plan show") && e.contains("csv") && e.contains("yaml"),
            "{e}"
        );
    }
}
