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
use comfy_table::Table;
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
    /// Standard output could not be written (disk full, a closed terminal).
    #[error("writing the output of `{command}`: {source}")]
    Write {
        /// The command.
        command: &'static str,
        /// What the write returned.
        source: std::io::Error,
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
    render_list_on(
        out,
        command,
        data,
        rows,
        columns,
        Screen::detect(out.output),
    )
}

/// [`render_list`] for a given screen (golden tests render at 80 columns).
pub fn render_list_on<R>(
    out: &OutputArgs,
    command: &'static str,
    data: &impl Serialize,
    rows: &[R],
    columns: &[Column<R>],
    screen: Screen,
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
            Ok(table_for(&headers, body, out.no_headers, screen))
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

/// Writes `items` as a pretty JSON array (the same text as `-o json` renders) while it is
/// serialized, through a buffer: a large listing is never held twice. A reader that went away
/// (`| head`) ends the output quietly, as it does for `cat`.
///
/// A fleet's inventory is some 100 MB of JSON, and serializing it took half the listing's time
/// on one core. The items are serialized in chunks on every core, each chunk as a pretty array
/// of its own, and written in order: the inside of the array `[\n  a,\n  b\n]` (everything
/// but its `[` and closing `\n]`) joined with `,` is, byte for byte, the whole array's.
pub fn write_json<T: Serialize + Sync>(
    out: impl std::io::Write,
    command: &'static str,
    items: &[T],
) -> Result<(), OutputError> {
    write_json_with(out, command, items, |chunk| {
        serde_json::to_vec_pretty(chunk)
    })
}

/// [`write_json`] with each chunk serialized by `chunk_json`, which must give what
/// `serde_json::to_vec_pretty` gives for the chunk (a listing's views may write their own JSON
/// on this hot path: `inventory -o json`).
pub fn write_json_with<T: Sync>(
    out: impl std::io::Write,
    command: &'static str,
    items: &[T],
    chunk_json: impl Fn(&[T]) -> Result<Vec<u8>, serde_json::Error> + Sync,
) -> Result<(), OutputError> {
    use std::io::Write as _;
    /// Items per chunk: some 2 MB of an inventory's JSON.
    const CHUNK: usize = 2048;
    let mut w = std::io::BufWriter::with_capacity(1 << 16, out);
    let chunks: Vec<&[T]> = items.chunks(CHUNK).collect();
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4)
        .min(chunks.len().max(1));
    let written = std::thread::scope(|scope| -> std::io::Result<()> {
        // Worker `k` serializes chunks k, k + workers, ...; each hands over one chunk at a time,
        // so at most two chunks per worker are held. Dropping the receivers (a write failed)
        // ends the workers at their next chunk.
        let receivers: Vec<_> = (0..workers)
            .map(|k| {
                let (tx, rx) = std::sync::mpsc::sync_channel(1);
                let (chunks, chunk_json) = (&chunks, &chunk_json);
                scope.spawn(move || {
                    for chunk in chunks.iter().skip(k).step_by(workers) {
                        if tx.send(chunk_json(chunk)).is_err() {
                            return;
                        }
                    }
                });
                rx
            })
            .collect();
        w.write_all(b"[")?;
        for i in 0..chunks.len() {
            let json = receivers[i % workers]
                .recv()
                .map_err(|_| std::io::Error::other("a JSON worker ended early"))?
                .map_err(std::io::Error::from)?;
            if i > 0 {
                w.write_all(b",")?;
            }
            // `[` + "\n  item,\n  item" + "\n]": the inside.
            w.write_all(&json[1..json.len() - 2])?;
        }
        w.write_all(if chunks.is_empty() { b"]\n" } else { b"\n]\n" })?;
        w.flush()
    });
    write_outcome(command, written)
}

/// What printing `command`'s output came to: a reader that went away (`| head`) is no error;
/// any other failure to write is, naming the command.
pub fn write_outcome(
    command: &'static str,
    written: std::io::Result<()>,
) -> Result<(), OutputError> {
    match written {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(source) => Err(OutputError::Write { command, source }),
    }
}

/// Gap between table columns (kubectl's).
const GAP: usize = 3;

/// Where a table is printed: how wide it may be and whether it may use colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Screen {
    /// Largest line length; `None`: no limit (`-o wide`).
    pub width: Option<usize>,
    /// ANSI colours (a terminal, and `NO_COLOR` unset).
    pub color: bool,
}

impl Screen {
    /// 80 columns (or `COLUMNS`, or the terminal's width), colour only on a terminal without
    /// `NO_COLOR`. Piped output is plain text: no colour, no box drawing (there is none).
    pub fn detect(format: Format) -> Screen {
        use std::io::IsTerminal;
        let tty = std::io::stdout().is_terminal();
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.trim().parse::<usize>().ok())
            .filter(|w| *w >= 40)
            .or_else(|| {
                tty.then(|| Table::new().width().map(usize::from))
                    .flatten()
                    .filter(|w| *w >= 40)
            })
            .unwrap_or(80);
        Screen {
            width: (format != Format::Wide).then_some(width),
            color: tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }
}

/// A table of `rows` under `headers` for the screen this process prints to (see
/// [`Screen::detect`]), ending with a newline.
pub fn table(headers: &[&str], rows: Vec<Vec<Cell>>, no_headers: bool) -> String {
    table_for(headers, rows, no_headers, Screen::detect(Format::Table))
}

/// A plain table: columns separated by three spaces, one line per row (a cell with line
/// breaks continues on the next lines, aligned under its column), never wrapped. When the
/// natural width exceeds `screen.width`, the widest columns are narrowed first and each
/// overlong value is shortened in the middle (`/etc/pki/…/server.pem`), so the start and the
/// end of a path, the parts people recognise, stay.
pub fn table_for(
    headers: &[&str],
    rows: Vec<Vec<Cell>>,
    no_headers: bool,
    screen: Screen,
) -> String {
    let n = headers.len();
    let len = |s: &str| s.chars().count();
    let mut widths: Vec<usize> = headers.iter().map(|h| len(h)).collect();
    for row in &rows {
        for (i, c) in row.iter().enumerate().take(n) {
            for l in c.text.lines() {
                widths[i] = widths[i].max(len(l));
            }
        }
    }
    if let Some(max) = screen.width {
        let floor: Vec<usize> = headers.iter().map(|h| len(h).max(6)).collect();
        let total = |w: &[usize]| w.iter().sum::<usize>() + GAP * w.len().saturating_sub(1);
        while total(&widths) > max {
            // Narrow the widest column first: long paths and names give way, short columns
            // (states, counts) stay whole.
            let Some((i, _)) = widths
                .iter()
                .enumerate()
                .filter(|(i, w)| **w > floor[*i])
                .max_by_key(|(i, w)| (**w, *i))
            else {
                break;
            };
            widths[i] -= 1;
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<(String, Tone)>, out: &mut String| {
        let mut parts: Vec<Vec<String>> = cells
            .iter()
            .enumerate()
            .map(|(i, (t, _))| {
                let mut lines: Vec<String> = t.lines().map(|l| shorten(l, widths[i])).collect();
                if lines.is_empty() {
                    lines.push(String::new());
                }
                lines
            })
            .collect();
        parts.resize(n, vec![String::new()]);
        let height = parts.iter().map(Vec::len).max().unwrap_or(1);
        for k in 0..height {
            let mut l = String::new();
            for (i, p) in parts.iter().enumerate() {
                let text = p.get(k).map(String::as_str).unwrap_or("");
                let last = i + 1 == n;
                let pad = if last { 0 } else { widths[i] - len(text) + GAP };
                match cells
                    .get(i)
                    .map(|c| c.1)
                    .and_then(|t| screen.color.then(|| ansi(t)).flatten())
                {
                    Some(code) if !text.is_empty() => {
                        l.push_str(&format!("\x1b[{code}m{text}\x1b[0m"));
                    }
                    _ => l.push_str(text),
                }
                l.push_str(&" ".repeat(pad));
            }
            out.push_str(l.trim_end());
            out.push('\n');
        }
    };
    if !no_headers {
        line(
            headers
                .iter()
                .map(|h| ((*h).to_owned(), Tone::Plain))
                .collect(),
            &mut out,
        );
    }
    for row in rows {
        line(
            row.into_iter().map(|c| (c.text, c.tone)).collect(),
            &mut out,
        );
    }
    out
}

fn ansi(t: Tone) -> Option<&'static str> {
    match t {
        Tone::Plain => None,
        Tone::Good => Some("32"),
        Tone::Warn => Some("33"),
        Tone::Bad => Some("31"),
        Tone::Busy => Some("36"),
        Tone::Undone => Some("35"),
    }
}

/// `s` in at most `width` characters, shortened in the middle with `…` when longer.
pub fn shorten(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width {
        return s.to_owned();
    }
    if width <= 1 {
        return "…".chars().take(width).collect();
    }
    let keep = width - 1;
    let head = keep.div_ceil(2);
    let tail = keep - head;
    let mut out: String = s.chars().take(head).collect();
    out.push('…');
    out.extend(s.chars().skip(n - tail));
    out
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

/// A span in its largest whole unit: `45s`, `12m`, `5h`, `30d`, `2y` (negative: `-3d`).
pub fn span(secs: i64) -> String {
    let a = secs.unsigned_abs();
    let (n, unit) = match a {
        0..60 => (a, "s"),
        60..3_600 => (a / 60, "m"),
        3_600..86_400 => (a / 3_600, "h"),
        86_400..31_536_000 => (a / 86_400, "d"),
        _ => (a / 31_536_000, "y"),
    };
    format!("{}{n}{unit}", if secs < 0 { "-" } else { "" })
}

/// How long ago `at` was (`5m`), or `never` when unset.
pub fn ago(at: i64) -> String {
    if at <= 0 {
        return "never".into();
    }
    span((certfleet_common::model::now() - at).max(0))
}

/// How long until `at` (`29d`, negative when past), or empty when unset.
pub fn until(at: i64) -> String {
    if at <= 0 {
        return String::new();
    }
    span(at - certfleet_common::model::now())
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

    /// A writer that fails every write with `kind`.
    struct Failing(std::io::ErrorKind);

    impl std::io::Write for Failing {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(self.0.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn streamed_json_is_the_rendered_json_and_a_closed_reader_is_not_an_error() {
        let r = rows();
        let rendered = render_list(&out(Format::Json, false), "t", &r, &r, &columns()).unwrap();
        let mut streamed = Vec::new();
        write_json(&mut streamed, "t", &r).unwrap();
        assert_eq!(String::from_utf8(streamed).unwrap(), rendered);
        // Every chunking edge: none, one item, a chunk less one, a chunk, a chunk and one, many.
        for n in [0, 1, 2047, 2048, 2049, 3 * 2048 + 5] {
            let items: Vec<serde_json::Value> = (0..n)
                .map(|i| serde_json::json!({"n": i, "tags": ["a", i.to_string()], "o": {"k": []}}))
                .collect();
            let mut streamed = Vec::new();
            write_json(&mut streamed, "t", &items).unwrap();
            let mut whole = serde_json::to_vec_pretty(&items).unwrap();
            whole.push(b'\n');
            assert!(streamed == whole, "{n} items differ from one serialization");
        }
        // `certfleet inventory -o json | head`: the reader left, the output just ends.
        write_json(Failing(std::io::ErrorKind::BrokenPipe), "t", &r).unwrap();
        let full = write_json(Failing(std::io::ErrorKind::StorageFull), "inventory", &r)
            .unwrap_err()
            .to_string();
        assert!(
            full.starts_with("writing the output of `inventory`: "),
            "{full}"
        );
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
    fn tables_fit_80_columns_shortening_long_values_in_the_middle() {
        let screen = Screen {
            width: Some(80),
            color: false,
        };
        let rows = vec![
            vec![
                Cell::plain("web-01"),
                Cell::plain(
                    "/etc/pki/ovirt-engine/keys/very/deep/directory/structure/apache.key.nopass",
                ),
                Cell::toned("expired", Tone::Bad),
            ],
            vec![Cell::plain("b"), Cell::plain("/x"), Cell::plain("ok")],
        ];
        let t = table_for(&["AGENT", "WHERE", "STATUS"], rows, false, screen);
        for l in t.lines() {
            assert!(l.chars().count() <= 80, "{l:?} is longer than 80\n{t}");
            assert!(
                !l.contains(['│', '─', '┌', '\x1b']),
                "box drawing or colour in {l:?}"
            );
        }
        let long = t.lines().nth(1).unwrap();
        assert!(
            long.contains("/etc/pki/ovirt-") && long.contains("apache.key.nopass"),
            "{t}"
        );
        assert!(long.contains('…'), "{t}");
        let wide = table_for(
            &["AGENT", "WHERE"],
            vec![vec![Cell::plain("a"), Cell::plain("x".repeat(120))]],
            false,
            Screen {
                width: None,
                color: true,
            },
        );
        assert!(
            wide.contains(&"x".repeat(120)),
            "-o wide keeps whole values"
        );
    }

    #[test]
    fn shorten_keeps_both_ends() {
        assert_eq!(shorten("abcdefghij", 10), "abcdefghij");
        assert_eq!(shorten("abcdefghij", 7), "abc…hij");
        assert_eq!(shorten("abcdefghij", 6), "abc…ij");
        assert_eq!(shorten("abc", 1), "…");
    }

    #[test]
    fn spans_use_their_largest_unit() {
        assert_eq!(span(45), "45s");
        assert_eq!(span(3 * 3600 + 5), "3h");
        assert_eq!(span(-3 * 86_400), "-3d");
        assert_eq!(span(800 * 86_400), "2y");
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
