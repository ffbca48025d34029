// System attributes: Lustre's xattrs stay inline, large ones overflow to a copy-on-write xattr
// block, limits throw typed errors naming the object and sizes and change nothing.

import Testing
import StrataPool
@testable import StrataDMU

@Suite struct DnodeXattrTests {
    @Test func lmaAndFidStayInlineWhateverElseIsSet() throws {
        let store = MemoryMetadataStore()
        var dnode = Dnode(objectNumber: 3, type: .regular)
        try dnode.setXattr("trusted.lov", [UInt8](repeating: 1, count: 700), store: store)   // bigger than the rest of the area
        try dnode.setXattr("trusted.lma", LustreXattrs.lma, store: store)
        try dnode.setXattr("trusted.fid", LustreXattrs.fid, store: store)
        let inline = SystemAttributes.decodeInlineEntries(dnode.systemAttributes.inlineBytes).map { String(decoding: $0.name, as: UTF8.self) }
        #expect(inline.contains("trusted.lma") && inline.contains("trusted.fid"))
        #expect(!inline.contains("trusted.lov"), "the 700-byte layout moved to the block")
        #expect(dnode.systemAttributes.inlineBytes.count <= DnodeLimits.inlineSABytesMax)
        try dnode.flushXattrs(store: store)
        #expect(try dnode.xattr("trusted.lov", store: store) == [UInt8](repeating: 1, count: 700))
    }

    @Test func overflowBlockIsCopyOnWriteAndDroppedWhenEmpty() throws {
        let store = MemoryMetadataStore()
        var dnode = Dnode(objectNumber: 4, type: .regular)
        try dnode.setXattr("user.a", [UInt8](repeating: 2, count: 5000), store: store)
        try dnode.flushXattrs(store: store)
        let first = dnode.systemAttributes.overflowBlock
        #expect(!first.isNull && first.lengthBytes == 8192)
        try dnode.setXattr("user.b", [UInt8](repeating: 3, count: 3000), store: store)
        try dnode.flushXattrs(store: store)
        let second = dnode.systemAttributes.overflowBlock
        #expect(second != first && store.liveBlockCount == 1, "old block freed, new one written")
        // Reload from the slot and remove both: the block goes.
        var reloaded = try #require(try dnode.encoded().withUnsafeBytes { raw in try Dnode.decode(raw, object: 4) })
        #expect(try reloaded.removeXattr("user.a", store: store))
        #expect(try !reloaded.removeXattr("user.a", store: store))
        #expect(try reloaded.xattr("user.b", store: store) == [UInt8](repeating: 3, count: 3000))
        try reloaded.flushXattrs(store: store)
        #expect(reloaded.systemAttributes.overflowBlock.isNull == false, "user.b (3000 B) still overflows")
        #expect(try reloaded.removeXattr("user.b", store: store))
        try reloaded.flushXattrs(store: store)
        #expect(reloaded.systemAttributes.overflowBlock.isNull && store.liveBlockCount == 0)
    }

    @Test func limitErrorsNameObjectAndSizes() throws {
        let store = MemoryMetadataStore()
        var dnode = Dnode(objectNumber: 99, type: .regular)
        let longName = String(repeating: "n", count: 256)
        #expect(throws: DnodeError.xattrNameInvalid(object: 99, nameBytes: 256, max: 255)) {
            try dnode.setXattr(longName, [1], store: store)
        }
        #expect(throws: DnodeError.xattrNameInvalid(object: 99, nameBytes: 0, max: 255)) { try dnode.setXattr("", [1], store: store) }
        let tooBig = [UInt8](repeating: 0, count: DnodeLimits.xattrValueBytesMax + 1)
        #expect(throws: DnodeError.xattrValueTooLarge(object: 99, name: "user.x", valueBytes: 65537, max: 65536)) {
            try dnode.setXattr("user.x", tooBig, store: store)
        }
        // Four maximum values fit in the block, the fifth does not; nothing changes on the error.
        let max = [UInt8](repeating: 5, count: DnodeLimits.xattrValueBytesMax)
        for index in 0 ..< 3 { try dnode.setXattr("user.v\(index)", max, store: store) }
        let before = dnode
        do {
            try dnode.setXattr("user.v3", max, store: store)
            try dnode.setXattr("user.v4", max, store: store)
            Issue.record("a fifth 64 KiB value was accepted")
        } catch let error {
            guard case .xattrSpaceExhausted(let object, let name, let needed, let available) = error else {
                Issue.record("unexpected \(error)"); return
            }
            #expect(object == 99 && (name == "user.v4" || name == "user.v3") && needed > available)
            #expect(error.description.contains("object 99"))
        }
        #expect(dnode.systemAttributes.inlineBytes == before.systemAttributes.inlineBytes)
        #expect(try dnode.xattr("user.v4", store: store) == nil)
    }

    @Test func placementIsAFunctionOfTheSet() throws {
        let store = MemoryMetadataStore()
        var first = Dnode(objectNumber: 1, type: .regular)
        var second = Dnode(objectNumber: 1, type: .regular)
        let xattrs: [(String, Int)] = [("a", 300), ("b", 200), ("c", 250), ("d", 10), ("e", 500)]
        for (name, size) in xattrs { try first.setXattr(name, [UInt8](repeating: 1, count: size), store: store) }
        for (name, size) in xattrs.reversed() { try second.setXattr(name, [UInt8](repeating: 1, count: size), store: store) }
        #expect(first.systemAttributes.inlineBytes == second.systemAttributes.inlineBytes)
        #expect(first.systemAttributes.overflow == second.systemAttributes.overflow)
    }
}
