// StrataLog — the write-ahead intent log (issue 6). Placeholder until it lands.
import StrataIO
import StrataPool
