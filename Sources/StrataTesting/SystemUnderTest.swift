// SystemUnderTest — how a storage system plugs into the harness.
//
// Theory. The harness knows nothing about the system's format; it needs six things: the
// devices it runs on (any number — a pool brings one spec per member), a way to format them,
// to open them (which runs recovery: log replay, uberblock selection…), to run one operation
// and to say when it is durable, to run the system's own full check (fsck), and to read back
// the logical state the operations are about. The oracle compares that state to the
// acknowledgement log through `effects(of:)`: every operation is described as blind writes of
// values to keys ("key k1 now holds these bytes", "the pool's uberblock is txg 7",
// "object X is gone"). That is enough for the contract of DESIGN.md: an acknowledged
// operation's effects must be visible unless a later operation overwrote them, an
// unacknowledged one's effects must be all there or all absent.
//
// Multi-device systems. `devices` lists every device; `format` and `open` get them in that
// order, as `BlockStorage`s: during the workload they are `RecordingDevice`s of one shared
// `CrashRecorder` session (a flush on one covers only that one's writes), and at check time
// they are `OverlayDevice`s of one crash image (one per device, all cut at the same crash
// point). The system must not keep devices across `open`s.
//
// Three optional hooks (defaults keep the simple model above) serve systems whose opening
// writes, or whose effects depend on their state — a pool is the example (PoolCrashSystem):
//
//   - `open(_:for:)` says why the harness opens: to run the workload, to check an image, or to
//     recover an image under a recorder (crash during recovery). A pool imports read-only to
//     check (checking must not change what is checked) and read-write to recover;
//   - `effects(of:performedOn:)` describes an operation after it ran, from the live instance
//     ("commit returned checkpoint 7 with these space maps"), for effects a pure function of
//     the operation cannot know (where the allocator put an extent);
//   - `stateAfterRecovery(_:)` names the state a completed recovery leaves, when recovery itself
//     commits something observable (a pool's read-write import writes a new uberblock). A crash
//     during recovery must leave the state before it, this state, or one the oracle allows.

import StrataIO

/// A device a system under test wants: the harness creates a zero-filled `MemoryDevice` of
/// this geometry, formats it, and records or crashes it.
public struct DeviceSpec: Sendable, Hashable {
    /// The device's path in errors and reports (e.g. "meta", "data", "pool-member-2").
    public let name: String
    public let sizeBytes: UInt64
    public let blockSizeBytes: Int

    public init(name: String, sizeBytes: UInt64, blockSizeBytes: Int = 4096) {
        precondition(sizeBytes > 0 && sizeBytes % UInt64(blockSizeBytes) == 0, "device \(name): size not whole blocks")
        self.name = name
        self.sizeBytes = sizeBytes
        self.blockSizeBytes = blockSizeBytes
    }
}

/// Why the harness opens a system (see `SystemUnderTest.open(_:for:)`).
public enum OpenPurpose: Sendable, Hashable {
    /// To run the workload on the recording devices (the operations follow).
    case workload
    /// To check a crash image (and to read the initial state of the formatted devices): the
    /// image is opened, checked, observed and dropped.
    case check
    /// To recover a crash image under a recorder, whose own crash images are then checked
    /// (crash during recovery). The instance is closed right after.
    case recovery
}

/// One blind write of an operation, as the oracle sees it: after the operation, `key` holds
/// `value` (`nil`: the key is absent).
public struct Effect<Key: Hashable & Sendable, Value: Equatable & Sendable>: Sendable {
    public let key: Key
    public let value: Value?

    public init(key: Key, value: Value?) {
        self.key = key
        self.value = value
    }
}

/// A storage system the harness can crash-test. Conform an adapter struct; the system's own
/// types stay as they are.
///
/// ```swift
/// struct KVUnderTest: SystemUnderTest {            // one device, synchronous puts
///     var devices: [DeviceSpec] { [DeviceSpec(name: "kv", sizeBytes: 64 << 20)] }
///     func format(_ devices: [any BlockStorage]) throws { try KV.format(devices[0]) }
///     func open(_ devices: [any BlockStorage]) throws -> KV { try KV.open(devices[0]) }
///     func perform(_ op: Put, on kv: KV, context: OperationContext) throws {
///         try kv.put(op.key, op.value); context.acknowledge()       // durable when it returns
///     }
///     func check(_ kv: KV) throws -> [String] { kv.fsck() }
///     func observe(_ kv: KV) throws -> [String: Bytes] { try kv.dumpAll() }
///     func effects(of op: Put) -> [Effect<String, Bytes>] { [Effect(key: op.key, value: op.value)] }
/// }
/// ```
///
/// A pool, whose import commits and whose effects depend on where the allocator put things,
/// also implements the three hooks: see `PoolCrashSystem` (target StrataPoolCrash).
public protocol SystemUnderTest {
    /// An open system (the result of `open`).
    associatedtype Instance
    associatedtype Operation: Sendable & CustomStringConvertible
    associatedtype Key: Hashable & Sendable & CustomStringConvertible
    associatedtype Value: Equatable & Sendable & CustomStringConvertible

    /// Name in reports.
    var name: String { get }
    /// The devices the system runs on, in the order `format` and `open` receive them.
    var devices: [DeviceSpec] { get }

    /// Creates an empty system on zero-filled devices (not recorded: it is the base image).
    func format(_ devices: [any BlockStorage]) throws
    /// Opens (and recovers) the system on `devices`. A crash image that does not open is a
    /// violation: throw an error that says why.
    func open(_ devices: [any BlockStorage]) throws -> Instance
    /// Closes cleanly (optional; the default does nothing). Not called after a crash.
    func close(_ instance: Instance) throws
    /// Runs one operation; calls `context.acknowledge()` once it is durable (now, or later
    /// from a commit callback of this or a later operation).
    func perform(_ operation: Operation, on instance: Instance, context: OperationContext) throws
    /// The system's own full check (fsck): one line per problem found; empty when clean.
    func check(_ instance: Instance) throws -> [String]
    /// The logical state the workload's operations are about. Throws when it cannot be read
    /// (an unreadable or corrupt value is a violation).
    func observe(_ instance: Instance) throws -> [Key: Value]
    /// What `operation` does to the observed state, as blind writes; empty for a pure
    /// durability point (sync).
    func effects(of operation: Operation) -> [Effect<Key, Value>]

    /// Opens the system for `purpose`. Default: `open(_:)` whatever the purpose. Override when
    /// opening writes (recovery that commits): open without writing for `.check`, recover for
    /// `.recovery`.
    func open(_ devices: [any BlockStorage], for purpose: OpenPurpose) throws -> Instance
    /// What `operation` did, asked right after `perform` returned, with the live instance.
    /// Default: `effects(of:)`.
    func effects(of operation: Operation, performedOn instance: Instance) -> [Effect<Key, Value>]
    /// The state a completed recovery leaves when it starts from a crash image observed as
    /// `observed`. Default: `observed` (recovery changes nothing `observe` reports).
    func stateAfterRecovery(_ observed: [Key: Value]) -> [Key: Value]
}

extension SystemUnderTest {
    public func close(_ instance: Instance) throws {}

    public func open(_ devices: [any BlockStorage], for purpose: OpenPurpose) throws -> Instance {
        try open(devices)
    }

    public func effects(of operation: Operation, performedOn instance: Instance) -> [Effect<Key, Value>] {
        effects(of: operation)
    }

    public func stateAfterRecovery(_ observed: [Key: Value]) -> [Key: Value] {
        observed
    }
}
