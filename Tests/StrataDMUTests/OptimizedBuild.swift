// Whether these tests run in an optimized build: allocation counts are measured only there (a
// debug build boxes closure contexts); `scripts/test.sh` runs the HotPath suites in a release
// build.

#if DEBUG
let optimizedBuild = false
#else
let optimizedBuild = true
#endif
