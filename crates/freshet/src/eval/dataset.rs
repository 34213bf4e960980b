//! Files `freshet eval` replays: MovieLens ratings in their three layouts,
//! and freshet's own CSV for ratings and clicks.
//!
//! MovieLens (`--format movielens`), recognised from the first line:
//! - `u.data` (ML-100K): `user<TAB>item<TAB>rating<TAB>timestamp`;
//! - `ratings.dat` (ML-1M, ML-10M): `user::item::rating::timestamp`;
//! - `ratings.csv` (ML-latest, ML-20M, ML-25M): header
//!   `userId,movieId,rating,timestamp`, then `user,item,rating,timestamp`.
//!
//! Timestamps are epoch seconds there. Line ends may be LF or CRLF.
//!
//! freshet CSV (ratings with `--format csv`, clicks always): a header line,
//! then one event per line, no quoting (ids and features contain no commas),
//! LF or CRLF:
//! - ratings: `user,item,rating,ts[,features]`
//! - clicks:  `user,item,clicked,ts[,features]`, `clicked` being 0/1 or false/true
//!
//! `ts` is epoch milliseconds; the optional `features` column holds
//! `name=value` pairs separated by `;` (for example `device=ios;page=home`).

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use freshet_core::keyed::{KeyedEvents, Target};

/// Layout of the ratings file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RatingsFormat {
    /// MovieLens `u.data`, `ratings.dat` or `ratings.csv` (detected from the first line).
    Movielens,
    /// freshet CSV: `user,item,rating,ts[,features]` with a header, ts in ms.
    Csv,
}

/// Header of freshet's ratings CSV.
pub const RATINGS_HEADER: &str = "user,item,rating,ts,features";
/// Header of freshet's clicks CSV.
pub const CLICKS_HEADER: &str = "user,item,clicked,ts,features";

/// A line that could not be read.
#[derive(Debug, Clone)]
pub struct Malformed {
    /// The file.
    pub path: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// Events read from a file, in file order, and the lines skipped.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The events, keyed as they are read (no allocation per event).
    pub events: KeyedEvents,
    /// The lines that were skipped.
    pub malformed: Vec<Malformed>,
    /// Bytes of the files these lines were (0 for generated events).
    pub bytes: u64,
}

/// Ratings outside `[min, max]` are malformed lines.
#[derive(Debug, Clone, Copy)]
pub struct RatingRange {
    /// Smallest accepted rating.
    pub min: f32,
    /// Largest accepted rating.
    pub max: f32,
}

/// MovieLens layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Tab,
    DoubleColon,
    Comma,
}

/// How the lines of a file read.
#[derive(Debug, Clone, Copy)]
enum Lines {
    Movielens(Layout, RatingRange),
    Csv(Kind, RatingRange),
}

impl Lines {
    fn parse(self, line: &str, out: &mut KeyedEvents) -> Result<(), String> {
        match self {
            Lines::Movielens(layout, range) => movielens_rating(line, layout, range, out),
            Lines::Csv(kind, range) => csv_event(line, kind, range, out),
        }
    }
}

/// A file of events, parsed whole or piece by piece as it is read.
#[derive(Debug)]
pub struct Reader {
    path: PathBuf,
    lines: Lines,
    has_header: bool,
}

/// Bytes read from the start of a MovieLens file to find its first line.
const FIRST_LINE_BYTES: u64 = 64 << 10;

impl Reader {
    /// A ratings file.
    pub fn ratings(path: &Path, format: RatingsFormat, range: RatingRange) -> anyhow::Result<Reader> {
        let (lines, has_header) = match format {
            RatingsFormat::Movielens => {
                let mut start = Vec::new();
                open(path)?
                    .take(FIRST_LINE_BYTES)
                    .read_to_end(&mut start)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let start = String::from_utf8_lossy(&start);
                let first = start.lines().find(|l| !l.trim().is_empty()).unwrap_or_default();
                let layout = if first.contains("::") {
                    Layout::DoubleColon
                } else if first.contains('\t') {
                    Layout::Tab
                } else {
                    Layout::Comma
                };
                let header = layout == Layout::Comma && first.trim_start().to_ascii_lowercase().starts_with("userid");
                (Lines::Movielens(layout, range), header)
            }
            RatingsFormat::Csv => {
                open(path)?; // a missing file fails here, not on the parsing thread
                (Lines::Csv(Kind::Rating, range), true)
            }
        };
        Ok(Reader { path: path.to_owned(), lines, has_header })
    }

    /// A clicks file (freshet CSV).
    pub fn clicks(path: &Path) -> anyhow::Result<Reader> {
        let unused = RatingRange { min: 0.0, max: 0.0 };
        open(path)?;
        Ok(Reader { path: path.to_owned(), lines: Lines::Csv(Kind::Click, unused), has_header: true })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's size in bytes now.
    pub fn size(&self) -> anyhow::Result<u64> {
        let metadata = std::fs::metadata(&self.path).with_context(|| format!("cannot read {}", self.path.display()))?;
        Ok(metadata.len())
    }

    /// Parses the whole file.
    pub fn read_all(&self) -> anyhow::Result<Loaded> {
        let mut all = Loaded::default();
        self.read_pieces(
            usize::MAX,
            || None,
            |piece| {
                all = piece;
                true
            },
        )?;
        Ok(all)
    }

    /// Reads and parses the file in pieces of about `bytes` bytes (whole
    /// lines), handing each to `each` in file order, until `each` returns
    /// false. A piece's events go into a [`Loaded`] that `spare` gives back
    /// (one `each` was done with: its buffers' pages are in use already),
    /// else a new one; either way sized up front, as a line is at most an
    /// event and its ids and features are shorter than the line (growing by
    /// doubling copies and touches fresh pages every time). A line that is
    /// not UTF-8 is a malformed line.
    pub fn read_pieces(
        &self,
        bytes: usize,
        mut spare: impl FnMut() -> Option<Loaded>,
        mut each: impl FnMut(Loaded) -> bool,
    ) -> anyhow::Result<()> {
        let cannot_read = || format!("cannot read {}", self.path.display());
        let mut file = open(&self.path)?;
        let target = bytes.max(1);
        let size = file.metadata().map_or(0, |metadata| metadata.len());
        let mut buffer: Vec<u8> = Vec::with_capacity(target.min(usize::try_from(size).unwrap_or(usize::MAX)));
        let mut ended = false;
        let mut header_pending = self.has_header;
        let mut line_number = 0;
        loop {
            // Whole lines up to about `target` bytes, or the rest of the file.
            let mut line_end = buffer.iter().rposition(|&b| b == b'\n').map(|at| at + 1);
            let cut = loop {
                match line_end {
                    _ if ended => break buffer.len(),
                    Some(end) if buffer.len() >= target => break end,
                    _ => {}
                }
                let from = buffer.len();
                // The rest of the piece; past it (a line longer than the piece) as much again.
                let want = if from < target { target - from } else { target }.min(READ_BYTES);
                let read = (&mut file).take(want as u64).read_to_end(&mut buffer).with_context(cannot_read)?;
                ended = read == 0;
                if let Some(at) = buffer[from..].iter().rposition(|&b| b == b'\n') {
                    line_end = Some(from + at + 1);
                }
            };
            if cut == 0 {
                return Ok(());
            }
            let piece = &buffer[..cut];
            let (lines, pairs) = piece
                .iter()
                .fold((1, 0), |(lines, pairs), &b| (lines + usize::from(b == b'\n'), pairs + usize::from(b == b'=')));
            let mut loaded = spare().unwrap_or_default();
            loaded.events.clear();
            loaded.malformed.clear();
            loaded.bytes = cut as u64;
            loaded.events.reserve(lines, pairs, piece.len());
            for raw in piece.strip_suffix(b"\n").unwrap_or(piece).split(|&b| b == b'\n') {
                line_number += 1;
                let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
                let parsed = match std::str::from_utf8(raw) {
                    Ok(line) if line.trim_ascii().is_empty() => continue,
                    Ok(_) if std::mem::take(&mut header_pending) => continue,
                    Ok(line) => self.lines.parse(line, &mut loaded.events),
                    Err(error) => Err(format!("not UTF-8 ({error})")),
                };
                if let Err(reason) = parsed {
                    loaded.malformed.push(Malformed { path: self.path.clone(), line: line_number, reason });
                }
            }
            buffer.drain(..cut);
            if !each(loaded) {
                return Ok(());
            }
        }
    }
}

/// Most bytes asked of the file in one read.
const READ_BYTES: usize = 4 << 20;

fn open(path: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Reads a ratings file.
pub fn read_ratings(path: &Path, format: RatingsFormat, range: RatingRange) -> anyhow::Result<Loaded> {
    Reader::ratings(path, format, range)?.read_all()
}

/// Reads a clicks file (freshet CSV).
pub fn read_clicks(path: &Path) -> anyhow::Result<Loaded> {
    Reader::clicks(path)?.read_all()
}

/// Takes the fields of a split line (up to `N`, trimmed) and counts them all.
fn fields<'a, const N: usize>(parts: impl Iterator<Item = &'a str>) -> ([&'a str; N], usize) {
    let mut out = [""; N];
    let mut found = 0;
    for field in parts {
        if found < N {
            out[found] = field.trim_ascii();
        }
        found += 1;
    }
    (out, found)
}

fn movielens_rating(line: &str, layout: Layout, range: RatingRange, out: &mut KeyedEvents) -> Result<(), String> {
    // One-character separators split with the fast single-byte search.
    let (fields, found) = match layout {
        Layout::Tab => fields::<4>(line.split('\t')),
        Layout::DoubleColon => fields::<4>(line.split("::")),
        Layout::Comma => fields::<4>(line.split(',')),
    };
    if found != 4 {
        return Err(format!("expected 4 fields, found {found}"));
    }
    let seconds: i64 = fields[3].parse().map_err(|_| format!("bad timestamp {:?}", fields[3]))?;
    let ts =
        seconds.checked_mul(1000).filter(|&ts| ts > 0).ok_or_else(|| format!("timestamp {seconds} out of range"))?;
    let (user, item) = (id("user", fields[0])?, id("item", fields[1])?);
    let rating = rating(fields[2], range)?;
    out.push_text(Target::Rating(rating), ts, user, item, "").map_err(|e| e.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Rating,
    Click,
}

fn csv_event(line: &str, kind: Kind, range: RatingRange, out: &mut KeyedEvents) -> Result<(), String> {
    let (fields, found) = fields::<5>(line.split(','));
    if !(4..=5).contains(&found) {
        return Err(format!("expected 4 or 5 fields, found {found}"));
    }
    let user = id("user", fields[0])?;
    let item = id("item", fields[1])?;
    let ts: i64 = fields[3].parse().map_err(|_| format!("bad ts {:?}", fields[3]))?;
    if ts <= 0 {
        return Err(format!("ts {ts} is not positive"));
    }
    let target = match kind {
        Kind::Rating => Target::Rating(rating(fields[2], range)?),
        Kind::Click => match fields[2] {
            "1" | "true" => Target::Click(true),
            "0" | "false" => Target::Click(false),
            other => return Err(format!("clicked must be 0/1 or false/true, found {other:?}")),
        },
    };
    out.push_text(target, ts, user, item, fields[4]).map_err(|e| e.to_string())
}

fn id<'a>(field: &str, value: &'a str) -> Result<&'a str, String> {
    if value.is_empty() { Err(format!("empty {field} id")) } else { Ok(value) }
}

fn rating(text: &str, range: RatingRange) -> Result<f32, String> {
    let value: f32 = text.parse().map_err(|_| format!("bad rating {text:?}"))?;
    if value.is_finite() && (range.min..=range.max).contains(&value) {
        Ok(value)
    } else {
        Err(format!("rating {value} outside [{}, {}]", range.min, range.max))
    }
}

/// Writes the ratings (or clicks) among `events` as freshet CSV.
pub fn write_csv(path: &Path, events: &KeyedEvents, clicks: bool) -> anyhow::Result<usize> {
    let file = std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let mut written = 0;
    let mut write = || -> std::io::Result<()> {
        writeln!(out, "{}", if clicks { CLICKS_HEADER } else { RATINGS_HEADER })?;
        for event in events.iter() {
            match (event.target, clicks) {
                (Target::Rating(rating), false) => write!(out, "{},{},{rating},", event.user_id, event.item_id)?,
                (Target::Click(clicked), true) => {
                    write!(out, "{},{},{},", event.user_id, event.item_id, u8::from(clicked))?;
                }
                _ => continue,
            }
            writeln!(out, "{},{}", event.ts, event.feature_text)?;
            written += 1;
        }
        out.flush()
    };
    write().with_context(|| format!("cannot write {}", path.display()))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use freshet_core::{Click, Features, Feedback};

    use super::*;

    const RANGE: RatingRange = RatingRange { min: 0.5, max: 5.0 };

    fn load(text: &str, format: RatingsFormat) -> Loaded {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("freshet-eval-{}-{n}", std::process::id()));
        std::fs::write(&dir, text).expect("temp file");
        let loaded = read_ratings(&dir, format, RANGE).expect("readable");
        let _ = std::fs::remove_file(&dir);
        loaded
    }

    fn summary(loaded: &Loaded) -> Vec<(String, String, f32, i64)> {
        loaded
            .events
            .iter()
            .map(|e| match e.target {
                Target::Rating(rating) => (e.user_id.to_owned(), e.item_id.to_owned(), rating, e.ts),
                other => panic!("not a rating: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn reads_the_three_movielens_layouts() {
        let expected = vec![
            ("196".to_owned(), "242".to_owned(), 3.0, 881_250_949_000),
            ("186".to_owned(), "302".to_owned(), 3.5, 891_717_742_000),
        ];
        let udata = load("196\t242\t3\t881250949\n186\t302\t3.5\t891717742\n", RatingsFormat::Movielens);
        let dat = load("196::242::3::881250949\n186::302::3.5::891717742\n", RatingsFormat::Movielens);
        let csv = load(
            "userId,movieId,rating,timestamp\r\n196,242,3.0,881250949\r\n186,302,3.5,891717742\r\n",
            RatingsFormat::Movielens,
        );
        for loaded in [udata, dat, csv] {
            assert!(loaded.malformed.is_empty(), "{:?}", loaded.malformed);
            assert_eq!(summary(&loaded), expected);
        }
    }

    #[test]
    fn malformed_lines_are_skipped_with_their_number() {
        let loaded = load(
            "userId,movieId,rating,timestamp\n1,2,4.0,100\n1,2\n1,3,9.0,100\n1,4,x,100\n,5,3,100\n2,2,3.0,101\n",
            RatingsFormat::Movielens,
        );
        assert_eq!(loaded.events.len(), 2);
        let lines: Vec<usize> = loaded.malformed.iter().map(|m| m.line).collect();
        assert_eq!(lines, [3, 4, 5, 6]);
    }

    #[test]
    fn a_line_that_is_not_utf8_is_a_malformed_line() {
        let path = std::env::temp_dir().join(format!("freshet-eval-utf8-{}", std::process::id()));
        std::fs::write(&path, b"user,item,rating,ts\nu1,i1,4.0,100\nu\xff,i2,3.0,101\nu2,i3,2.0,102\n")
            .expect("temp file");
        let loaded = read_ratings(&path, RatingsFormat::Csv, RANGE).expect("readable");
        let _ = std::fs::remove_file(&path);
        assert_eq!(loaded.events.len(), 2);
        assert_eq!(loaded.malformed.len(), 1);
        assert_eq!(loaded.malformed[0].line, 3);
        assert!(loaded.malformed[0].reason.contains("not UTF-8"), "{}", loaded.malformed[0].reason);
    }

    #[test]
    fn a_file_read_in_pieces_is_the_file_read_whole() {
        let text = "userId,movieId,rating,timestamp\r\n1,2,4.0,100\r\n\n1,2\n1,3,9.0,100\n2,2,3.0,101\n3,1,1.5,99";
        let path = std::env::temp_dir().join(format!("freshet-eval-pieces-{}", std::process::id()));
        std::fs::write(&path, text).expect("temp file");
        let reader = Reader::ratings(&path, RatingsFormat::Movielens, RANGE).expect("readable");
        let whole = reader.read_all().expect("readable");
        assert_eq!(whole.events.len(), 3);
        assert_eq!(whole.bytes, text.len() as u64);
        for bytes in [1, 5, 14, 40, 1000] {
            let (mut events, mut lines, mut pieces, mut read) = (KeyedEvents::new(), Vec::new(), 0, 0);
            let spare = std::cell::Cell::new(None);
            reader
                .read_pieces(
                    bytes,
                    || spare.take(),
                    |piece| {
                        events.append(&piece.events);
                        lines.extend(piece.malformed.iter().map(|m| m.line));
                        pieces += 1;
                        read += piece.bytes;
                        spare.set(Some(piece)); // given back: its events must not show up again
                        true
                    },
                )
                .expect("readable");
            assert_eq!(events, whole.events, "pieces of {bytes} bytes");
            assert_eq!(lines, [4, 5], "pieces of {bytes} bytes");
            assert_eq!(read, text.len() as u64, "pieces of {bytes} bytes");
            assert!(pieces > 1 || bytes >= text.len(), "pieces of {bytes} bytes");
        }
        let mut taken = 0;
        reader
            .read_pieces(
                1,
                || None,
                |_| {
                    taken += 1;
                    taken < 2
                },
            )
            .expect("readable");
        assert_eq!(taken, 2, "stops when told");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn freshet_csv_round_trips_with_features() {
        let mut events = KeyedEvents::new();
        events.push(&Feedback::Click(Click {
            user: "u1".into(),
            item: "i9".into(),
            clicked: true,
            ts: 1_700_000_000_123,
            features: Features::from([("device".to_owned(), "ios".to_owned()), ("page".to_owned(), "home".to_owned())]),
        }));
        events.push(&Feedback::Click(Click {
            user: "u2".into(),
            item: "i1".into(),
            clicked: false,
            ts: 5,
            features: Features::new(),
        }));
        let path = std::env::temp_dir().join(format!("freshet-eval-clicks-{}", std::process::id()));
        assert_eq!(write_csv(&path, &events, true).expect("written"), 2);
        let loaded = read_clicks(&path).expect("readable");
        let _ = std::fs::remove_file(&path);
        assert!(loaded.malformed.is_empty(), "{:?}", loaded.malformed);
        assert_eq!(loaded.events, events);
    }
}
