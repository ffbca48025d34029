import Testing
@testable import StrataPool

@Suite struct PolicyTests {
    @Test func defaultPolicyIsValid() {
        #expect(PoolPolicy().validationProblems().isEmpty)
    }

    @Test func badValuesAreNamed() {
        var policy = PoolPolicy()
        policy.spillThresholdPercent = 0
        policy.smallBlockCutoffBytes = 5000
        policy.migrateLowPercent = 90
        let problems = policy.validationProblems()
        #expect(problems.count == 3)
        #expect(problems.contains { $0.hasPrefix("spill-threshold=0") })
        #expect(problems.contains { $0.hasPrefix("small-block-cutoff=5000") })
        #expect(problems.contains { $0.hasPrefix("migrate-low=90") })
    }

    @Test func roleNamesRoundTrip() {
        for role in DeviceRole.allCases { #expect(DeviceRole(name: role.name) == role) }
        #expect(DeviceRole(name: "special") == nil)
    }
}

@Suite struct PolicySettingsTests {
    @Test func settingsRoundTripByName() throws {
        var policy = PoolPolicy()
        try policy.set("copies.metadata", to: "2")
        try policy.set("small-block-cutoff", to: "64K")
        try policy.set("spill-threshold", to: "75")
        #expect(policy.copies(for: .metadata) == 2)
        #expect(policy.smallBlockCutoffBytes == 65536)
        #expect(policy.value(of: "spill-threshold") == "75")
        #expect(policy.settings.count == PoolPolicy.settingNames.count)
    }

    @Test func badSettingsLeaveThePolicyUnchanged() {
        var policy = PoolPolicy()
        let before = policy
        #expect(throws: PoolError.self) { try policy.set("colour", to: "blue") }
        #expect(throws: PoolError.self) { try policy.set("copies.data", to: "9") }
        #expect(throws: PoolError.self) { try policy.set("spill-threshold", to: "abc") }
        #expect(throws: PoolError.self) { try policy.set("small-block-cutoff", to: "5000") }
        #expect(throws: PoolError.self) { try policy.set("migrate-low", to: "90") }
        #expect(policy == before)
    }

    @Test func byteSizesParse() {
        #expect(PoolPolicy.parseBytes("1M") == 1 << 20)
        #expect(PoolPolicy.parseBytes("64KiB") == 65536)
        #expect(PoolPolicy.parseBytes("12") == 12)
        #expect(PoolPolicy.parseBytes("") == nil)
        #expect(PoolPolicy.parseBytes("1.5G") == nil)
        #expect(PoolPolicy.parseBytes("99999999999T") == nil)
    }
}
