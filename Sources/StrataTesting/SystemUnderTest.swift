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
/// struct PoolUnderTest: SystemUnderTest {
///     var devices: [DeviceSpec] { (0..<3).map { DeviceSpec(name: "member\($0)", sizeBytes: 64 << 20) } }
///     func format(_ devices: [any BlockStorage]) throws { try Pool.create(devices, …) }
///     func open(_ devices: [any BlockStorage]) throws -> Pool { try Pool.import(devices) }
///     func perform(_ op: PoolOperation, on pool: Pool, context: OperationContext) throws {
///         try pool.commitUberblock(…); context.acknowledge()   // durable when it returns
///     }
///     func check(_ pool: Pool) throws -> [String] { try pool.verify() }
///     func observe(_ pool: Pool) throws -> [String: UInt64] { ["uberblock.txg": pool.txg] }
///     func effects(of op: PoolOperation) -> [Effect<String, UInt64>] { [Effect(key: "uberblock.txg", value: op.txg)] }
/// }
/// ```
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
}

extension SystemUnderTest {
    public func close(_ instance: Instance) throws {}
}
