// swift-tools-version: 6.0
//
// Strata — a userspace object storage device engine.
// Layers (DESIGN.md): CShims → StrataIO → StrataPool → StrataLog → StrataDMU → StrataOSD,
// with StrataTesting depending only on the protocols it fakes. One target per layer.
import PackageDescription

let package = Package(
    name: "Strata",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "StrataIO", targets: ["StrataIO"]),
        .executable(name: "strata-perf", targets: ["strata-perf"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // C glue only: liburing macros and flags, libaio, block ioctls, crc32c.
        .target(
            name: "CShims",
            path: "CShims",
            cSettings: [.unsafeFlags(["-O2"])],
            linkerSettings: [.linkedLibrary("uring"), .linkedLibrary("aio")]
        ),
        .target(
            name: "StrataIO",
            dependencies: ["CShims"],
            path: "Sources/StrataIO",
            swiftSettings: [.unsafeFlags(["-enforce-exclusivity=unchecked"])]
        ),
        .executableTarget(
            name: "strata-perf",
            dependencies: [
                "StrataIO",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "perf"
        ),
        // Test-only malloc interposer: counts allocations so the hot path can be proven
        // allocation-free (swift-nio's allocation-counter idea).
        .target(name: "AllocCounter", path: "Tests/AllocCounter"),
        .testTarget(
            name: "StrataIOTests",
            dependencies: ["StrataIO", "CShims", "AllocCounter"],
            path: "Tests/StrataIOTests"
        ),
    ],
    swiftLanguageModes: [.v6]
)
