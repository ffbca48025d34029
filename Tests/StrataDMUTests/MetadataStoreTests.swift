import Testing
import StrataPool
@testable import StrataDMU

@Suite struct MetadataStoreTests {
    @Test func memoryStoreVerifiesChecksums() throws {
        let store = MemoryMetadataStore()
        let block = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { block.deallocate() }
        for index in 0..<4096 { block[index] = UInt8(truncatingIfNeeded: index * 7) }
        let pointer = try store.writeNew(UnsafeRawBufferPointer(block))
        block.initializeMemory(as: UInt8.self, repeating: 0)
        try store.read(pointer, into: block)
        #expect(block[4095] == UInt8(truncatingIfNeeded: 4095 * 7))
        store.corrupt(pointer, byteOffset: 100)
        #expect(throws: MetadataStoreError.self) { try store.read(pointer, into: block) }
        store.free(pointer)
        #expect(store.liveBlockCount == 0)
    }
}
