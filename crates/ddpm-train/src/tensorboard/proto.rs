//! The protobuf messages of TensorBoard event files that ddpm-rs writes, derived by hand with
//! prost (field numbers as in TensorBoard's `event.proto`, `summary.proto`, `tensor.proto` and
//! `tensor_shape.proto`; fields ddpm-rs never writes are left out, so a reader skips them).

/// One record of an event file: a time, a step and what happened.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// Seconds since the Unix epoch.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    /// The training step the event belongs to.
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// The payload.
    #[prost(oneof = "What", tags = "3, 5, 7")]
    pub what: Option<What>,
}

/// The payload of an [`Event`].
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum What {
    /// The first event of a file: `brain.Event:2` (readers then purge on [`SessionLog`] starts).
    #[prost(string, tag = "3")]
    FileVersion(String),
    /// Scalars, images, text.
    #[prost(message, tag = "5")]
    Summary(Summary),
    /// A session's start: readers drop what earlier files recorded at its step and later.
    #[prost(message, tag = "7")]
    SessionLog(SessionLog),
}

/// A change of the writing session.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionLog {
    /// What happened.
    #[prost(enumeration = "SessionStatus", tag = "1")]
    pub status: i32,
    /// The checkpoint the session starts from, if any.
    #[prost(string, tag = "2")]
    pub checkpoint_path: String,
    /// A note for people.
    #[prost(string, tag = "3")]
    pub msg: String,
}

/// `SessionLog.SessionStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum SessionStatus {
    /// Not set.
    Unspecified = 0,
    /// A session (re)starts at the event's step.
    Start = 1,
    /// A session stops.
    Stop = 2,
    /// A checkpoint was written.
    Checkpoint = 3,
}

/// The values of one event.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    /// One value per tag.
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<Value>,
}

/// One tagged value of a [`Summary`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct Value {
    /// The name TensorBoard shows.
    #[prost(string, tag = "1")]
    pub tag: String,
    /// Which plugin reads a tensor value (the text plugin for text).
    #[prost(message, optional, tag = "9")]
    pub metadata: Option<SummaryMetadata>,
    /// The value.
    #[prost(oneof = "Kind", tags = "2, 4, 8")]
    pub kind: Option<Kind>,
}

/// The kinds of [`Value`] ddpm-rs writes.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Kind {
    /// A scalar (`simple_value`).
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    /// An encoded image.
    #[prost(message, tag = "4")]
    Image(Image),
    /// A tensor (text: a string tensor read by the text plugin).
    #[prost(message, tag = "8")]
    Tensor(TensorProto),
}

/// `Summary.Image`: an encoded (PNG) image and its size.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Image {
    /// Height in pixels.
    #[prost(int32, tag = "1")]
    pub height: i32,
    /// Width in pixels.
    #[prost(int32, tag = "2")]
    pub width: i32,
    /// Channels: 1 grey, 3 RGB, 4 RGBA.
    #[prost(int32, tag = "3")]
    pub colorspace: i32,
    /// The PNG file's bytes.
    #[prost(bytes = "vec", tag = "4")]
    pub encoded_image_string: Vec<u8>,
}

/// Which plugin owns a value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryMetadata {
    /// The plugin and its settings.
    #[prost(message, optional, tag = "1")]
    pub plugin_data: Option<PluginData>,
}

/// `SummaryMetadata.PluginData`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PluginData {
    /// `text` for text.
    #[prost(string, tag = "1")]
    pub plugin_name: String,
    /// The plugin's own settings (empty: its defaults).
    #[prost(bytes = "vec", tag = "2")]
    pub content: Vec<u8>,
}

/// `DataType.DT_STRING`.
pub const DT_STRING: i32 = 7;

/// A tensor; ddpm-rs writes string tensors only.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    /// The element type ([`DT_STRING`]).
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    /// The shape.
    #[prost(message, optional, tag = "2")]
    pub tensor_shape: Option<TensorShapeProto>,
    /// The elements of a string tensor.
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub string_val: Vec<Vec<u8>>,
}

/// A tensor's shape.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    /// The dimensions, outermost first.
    #[prost(message, repeated, tag = "2")]
    pub dim: Vec<Dim>,
}

/// `TensorShapeProto.Dim`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Dim {
    /// Its size.
    #[prost(int64, tag = "1")]
    pub size: i64,
}
