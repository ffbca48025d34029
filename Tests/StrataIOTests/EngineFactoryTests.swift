// Engine choice: io_uring unless the sysctl or io_uring_setup refuses it; explicit choices win.

import Foundation
import Testing
@testable import StrataIO

@Suite("IOEngineFactory", .serialized)
struct EngineFactoryTests {
    @Test func sysctlDecision() {
        #expect(IOEngineFactory.ioUringDisabledReason(sysctl: nil, privileged: false) == nil)
        #expect(IOEngineFactory.ioUringDisabledReason(sysctl: "0\n", privileged: false) == nil)
        #expect(IOEngineFactory.ioUringDisabledReason(sysctl: "1\n", privileged: true) == nil)
        #expect(IOEngineFactory.ioUringDisabledReason(sysctl: "1\n", privileged: false)?.contains("io_uring_disabled=1") == true)
        #expect(IOEngineFactory.ioUringDisabledReason(sysctl: "2\n", privileged: true)?.contains("io_uring_disabled=2") == true)
    }

    @Test func explicitChoicesAndTheEnvironmentOverride() throws {
        let (device, directory) = try EngineFixture.makeDevice(sizeBytes: 1 << 20)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        #expect(try IOEngineFactory.makeEngine(devices: [device], choice: .libaio).kind == .libaio)
        #expect(try IOEngineFactory.makeEngine(devices: [device], choice: .ioUring).kind == .ioUring)
        if IOEngineFactory.ioUringDisabledReason() == nil && getenv("STRATA_IO_ENGINE") == nil {
            #expect(try IOEngineFactory.makeEngine(devices: [device]).kind == .ioUring)
        }
        setenv("STRATA_IO_ENGINE", "libaio", 1)
        defer { unsetenv("STRATA_IO_ENGINE") }
        #expect(try IOEngineFactory.makeEngine(devices: [device]).kind == .libaio)
        setenv("STRATA_IO_ENGINE", "spdk", 1)
        #expect(throws: IOError.invalidConfiguration(name: "STRATA_IO_ENGINE", value: "spdk",
                                                     reason: "expected automatic, io_uring or libaio")) {
            _ = try IOEngineFactory.makeEngine(devices: [device])
        }
    }

    @Test func invalidConfigurationsAreRefused() throws {
        let (device, directory) = try EngineFixture.makeDevice(sizeBytes: 1 << 20)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var configuration = IOEngineConfiguration(queueDepth: 8)
        configuration.writeInFlightMin = 0
        #expect(throws: IOError.self) { _ = try URingEngine(devices: [device], configuration: configuration) }
        configuration = IOEngineConfiguration(queueDepth: 0)
        #expect(throws: IOError.self) { _ = try AIOEngine(devices: [device], configuration: configuration) }
    }
}
