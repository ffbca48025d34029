// Dnode — the fixed-size record that describes one object.
//
// Theory. Every object (regular file, directory, index, symlink, device node) is described by one
// dnode: a 1 KiB slot in the dnode table, addressed by object number (slot = object number; the
// table block holding it is objectNumber / DnodeTableBlock.dnodesPerBlock). A dnode holds:
//   - the POSIX attributes of Lustre's `lu_attr` as fixed fields (size, blocks, the four times in
//     nanoseconds, mode, uid, gid, nlink, flags, projid, rdev) plus the type and a generation;
//   - a body of `DnodeLimits.bodyBytes` shared by two variable areas:
//       * the system-attribute (SA) area: small xattrs packed inline (the ZFS SA idea, the place
//         Lustre's `trusted.lma`, `trusted.fid`, `trusted.lov`, `trusted.link` live), filled first,
//         up to `DnodeLimits.inlineSABytesMax`; xattrs that do not fit go to one xattr block
//         (`SystemAttributes`);
//       * the inline extent list: the object's extent map while it is small; a larger map spills
//         into a tree of extent-map blocks and the dnode keeps only its root pointer (`ExtentMap`).
//
// Why 1 KiB (ZFS "large dnodes", dnodesize=1k, the size Lustre recommends for ZFS MDTs):
//   - 512 B leaves ~330 B of body once the fixed fields are in; `trusted.lma` (24 B),
//     `trusted.fid` (44 B) and a typical PFL layout (300–400 B) with their names and entry headers
//     are ~500 B: with 512 B every MDT object would need a second block read for its layout;
//   - 1 KiB gives an 848 B body: the three xattrs above plus a linkEA fit inline, and an OST object
//     (LMA + PFID, ~110 B) keeps ~700 B for inline extents (a dozen small extents);
//   - 2 KiB or more halves the dnodes per table block and doubles the cache memory and checkpoint
//     write volume per dirty dnode for xattr sets that rarely exceed 1 KiB.
//
// Invariants: a dnode's SA area and inline extent list together fit in the body; the SA area is
// in its canonical form (entries sorted by name, no duplicates, each within the name/value
// limits); the extent map root is either inline bytes or a non-null tree pointer.
// Crash safety: dnodes are never written in place. A changed dnode makes its dnode-table block
// dirty; the checkpoint writes that block copy-on-write (checksum in the parent pointer), then the
// uberblock. Until then the intent log carries the change. A dnode read from a table block whose
// checksum passed is decoded with the same checks as before it was written (magic, version,
// object number, lengths), so a misdirected or stale slot is caught, not returned.

import StrataPool

/// The named limits of dnodes and their xattrs, in one place with their reasons.
public enum DnodeLimits {
    /// One dnode slot on disk (see the file comment for why 1 KiB).
    public static let slotBytes = 1024
    /// Fixed fields at the start of the slot (`Dnode+Encoding.swift` pins their offsets).
    public static let headerBytes = 176
    /// The area shared by the SA bytes and the inline extent list.
    public static let bodyBytes = slotBytes - headerBytes
    /// SA bytes allowed inline: most of the body, so an MDT object's LMA + layout + linkEA stay
    /// inline, while 128 B always remain for inline extents (two small extents) so a small file
    /// with a big layout does not need an extent-map block for its first writes.
    public static let inlineSABytesMax = bodyBytes - 128
    /// Longest xattr name, in bytes: Linux XATTR_NAME_MAX.
    public static let xattrNameBytesMax = 255
    /// Largest xattr value: Linux XATTR_SIZE_MAX (64 KiB), what ldiskfs and ZFS accept.
    public static let xattrValueBytesMax = 64 << 10
    /// Largest xattr overflow block: room for four values of the maximum size with their names.
    /// Bounds the memory and the single write an xattr set may cost; more is an error
    /// (`DnodeError.xattrSpaceExhausted`), like ldiskfs's one-block limit without ea_inode.
    public static let xattrBlockBytesMax = 256 << 10
}

/// What an object is. Values are on disk (one byte in the dnode).
public enum ObjectType: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// A free slot (never stored: a free slot is all zero).
    case free = 0
    case regular = 1
    case directory = 2
    /// A key-value index object (B+tree), Lustre's DFT_INDEX.
    case index = 3
    case symlink = 4
    /// A character or block device, FIFO or socket (Lustre's DFT_NODE); `rdev` says which.
    case node = 5

    public var description: String {
        switch self {
        case .free: "free"
        case .regular: "regular"
        case .directory: "directory"
        case .index: "index"
        case .symlink: "symlink"
        case .node: "node"
        }
    }
}

/// Where an object's extent map is: packed inline in the dnode, or a tree of extent-map blocks.
public enum ExtentMapRoot: Equatable, Sendable {
    /// The encoded extents (`MappedExtent` wire form), packed; empty for an object without data.
    case inline([UInt8])
    /// The root block of the extent-map tree.
    case tree(BlockPointer)

    public static let empty = ExtentMapRoot.inline([])

    /// Bytes this root takes in the dnode body (a tree root lives in the fixed header).
    public var inlineBytes: Int {
        if case .inline(let bytes) = self { return bytes.count }
        return 0
    }
}

/// One object's dnode, in memory. A value: the cache hands out copies, and changes go back
/// through `DnodeCache.update`.
public struct Dnode: Equatable, Sendable {
    public var objectNumber: UInt64
    public var type: ObjectType
    /// Bumped each time the slot is reused, so a stale handle (object number + generation) is told
    /// from the object now in the slot.
    public var generation: UInt64
    public var sizeBytes: UInt64
    /// Space used, in 512-byte units (`la_blocks`).
    public var blocks: UInt64
    public var atimeNs: Int64
    public var mtimeNs: Int64
    public var ctimeNs: Int64
    /// Birth (creation) time.
    public var btimeNs: Int64
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var nlink: UInt32
    /// Inode flags (`la_flags`: immutable, append-only, ...).
    public var flags: UInt32
    public var projid: UInt32
    /// Device number of a `.node` object.
    public var rdev: UInt32
    public var extentMap: ExtentMapRoot
    public var systemAttributes: SystemAttributes

    public init(objectNumber: UInt64, type: ObjectType, generation: UInt64 = 1, mode: UInt32 = 0o100644,
                uid: UInt32 = 0, gid: UInt32 = 0, timeNs: Int64 = 0) {
        precondition(type != .free, "a dnode of type free for object \(objectNumber)")
        self.objectNumber = objectNumber
        self.type = type
        self.generation = generation
        self.sizeBytes = 0
        self.blocks = 0
        self.atimeNs = timeNs
        self.mtimeNs = timeNs
        self.ctimeNs = timeNs
        self.btimeNs = timeNs
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.nlink = type == .directory ? 2 : 1
        self.flags = 0
        self.projid = 0
        self.rdev = 0
        self.extentMap = .empty
        self.systemAttributes = SystemAttributes()
    }

    /// Bytes of the body the SA area leaves to an inline extent list: what `ExtentMap.flush`
    /// receives as its inline capacity.
    public var inlineExtentCapacityBytes: Int {
        DnodeLimits.bodyBytes - systemAttributes.inlineBytes.count
    }

    /// Metadata blocks this dnode references directly (xattr block, extent-map root), for
    /// `strata pool check`.
    public var referencedBlocks: [BlockPointer] {
        var pointers: [BlockPointer] = []
        if !systemAttributes.overflowBlock.isNull { pointers.append(systemAttributes.overflowBlock) }
        if case .tree(let root) = extentMap { pointers.append(root) }
        return pointers
    }

    /// An estimate of the heap and inline bytes this value holds (the cache charges it).
    public var residentBytes: Int {
        func heap(_ count: Int) -> Int { count == 0 ? 0 : 32 + (count + 15) & ~15 }
        var extentBytes = 0
        if case .inline(let bytes) = extentMap { extentBytes = heap(bytes.count) }
        return MemoryLayout<Dnode>.stride + heap(systemAttributes.inlineBytes.count) + extentBytes
            + systemAttributes.overflowResidentBytes
    }
}

/// Operating errors of dnodes and their xattrs, each naming the object and the values involved.
public enum DnodeError: Error, Equatable, Sendable, CustomStringConvertible {
    case xattrNameInvalid(object: UInt64, nameBytes: Int, max: Int)
    case xattrValueTooLarge(object: UInt64, name: String, valueBytes: Int, max: Int)
    /// The xattrs that do not fit inline need an xattr block larger than its limit.
    case xattrSpaceExhausted(object: UInt64, name: String, neededBytes: Int, availableBytes: Int)
    /// A slot or xattr block failed a structural check after its checksum passed.
    case corrupt(object: UInt64, reason: String)
    case unsupportedVersion(object: UInt64, version: UInt8)
    case metadata(object: UInt64, MetadataStoreError)

    public var description: String {
        switch self {
        case .xattrNameInvalid(let object, let nameBytes, let max):
            return "object \(object): xattr name of \(nameBytes) bytes (must be 1...\(max) bytes)"
        case .xattrValueTooLarge(let object, let name, let valueBytes, let max):
            return "object \(object): xattr \(name) value of \(valueBytes) bytes exceeds the limit of \(max) bytes"
        case .xattrSpaceExhausted(let object, let name, let neededBytes, let availableBytes):
            return "object \(object): setting xattr \(name) needs an xattr block of \(neededBytes) bytes for the xattrs that do not fit inline (\(DnodeLimits.inlineSABytesMax) bytes); the block limit is \(availableBytes) bytes"
        case .corrupt(let object, let reason):
            return "object \(object): corrupt dnode metadata: \(reason)"
        case .unsupportedVersion(let object, let version):
            return "object \(object): dnode format version \(version) is newer than this build supports (\(DnodeFormat.version))"
        case .metadata(let object, let error):
            return "object \(object): \(error)"
        }
    }
}

extension Dnode {
    // The xattr API of an object; values that overflowed are read from the xattr block on demand.

    /// The value of xattr `name`, or nil when the object has none by that name.
    public mutating func xattr(_ name: String, store: any MetadataStore) throws(DnodeError) -> [UInt8]? {
        try systemAttributes.value(name, object: objectNumber, store: store)
    }

    /// Sets (creates or replaces) xattr `name`. Throws, changing nothing, when the name or value
    /// is over its limit or the object's xattr space is exhausted.
    public mutating func setXattr(_ name: String, _ value: [UInt8], store: any MetadataStore) throws(DnodeError) {
        try systemAttributes.set(name, value, object: objectNumber, store: store)
    }

    /// Removes xattr `name`; false when there was none.
    @discardableResult
    public mutating func removeXattr(_ name: String, store: any MetadataStore) throws(DnodeError) -> Bool {
        try systemAttributes.remove(name, object: objectNumber, store: store)
    }

    /// Every xattr name, sorted.
    public mutating func xattrNames(store: any MetadataStore) throws(DnodeError) -> [String] {
        try systemAttributes.names(object: objectNumber, store: store)
    }

    /// Writes a changed xattr block copy-on-write (freeing the old one); the checkpoint calls it
    /// before encoding the dnode.
    public mutating func flushXattrs(store: any MetadataStore) throws(DnodeError) {
        try systemAttributes.flush(object: objectNumber, store: store)
    }
}
