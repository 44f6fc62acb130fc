"""Every tuning constant of the exact solve, in one place: what each trades, and what measured it.

None of these changes a result: the exact solver is optimal and its certificate is checked independently
for any value. They trade time and memory. After changing one, rerun the benchmark named with it, side
by side with the old value in one run: ``benchmarks/test_bench_transport.py`` (the kernel alone, 1M and
10M users), ``benchmarks/test_bench_solvers.py`` (``eoca.solve`` exact against the heuristic at 1M and
10M) and ``benchmarks/test_bench_distributed.py`` (the Dask solve). Figures below are from those runs on
two cores.
"""

from __future__ import annotations

# ---- work split of the parallel kernels (a fixed split: results never depend on the number of threads) --
NCHUNK = 64  # chunks of users of the parallel scans (refills, member lists, best values)
PASS_BLOCK = 32_768  # users per block of the pass; moves test_bench_transport (pass_s)
PASS_SWEEP = 320  # users whose best and second-best values are swept column by column together (the
# sweep's rows and columns stay in the core's cache: 512 was 25% slower); moves test_bench_transport
GAP_BINS = 2048  # histogram of the pass's gaps by float32 exponent and 3 mantissa bits (the first load's
# threshold is read from it without a sort)
AHEAD = 16  # users ahead whose row, level and flags a scan of scattered users asks the CPU to fetch;
# moves test_bench_transport (repair_s) on grids that do not fit in cache

# ---- phase 1, warm prices from a sample ----------------------------------------------------------------
SAMPLE_STEP = 10  # 1 user in this many forms the sample of the next level down
BASE_USERS = 2_000  # below this many users a level starts from zero prices (no sample)
UNREPAIRED = 500_000  # a sample level below this many users is left at its Newton step's prices, if
WARM_CUT = 0.4  # the step left at most this share of the imbalance (1M x 8: 0.08-0.33; 1M x 50: 0.6, and
# the level above then had twice the imbalance and took 1.9x as long); both move test_bench_solvers

# ---- phase 3, the Newton step on the prices -------------------------------------------------------------
NEWTON_USERS = 50_000  # below, the repair costs less than the step
DENSITY_USERS = 16_384  # about this many users estimate how the node counts move with the prices
MARGIN = 0.25  # of the first load's gap: every user outside the step's reach keeps a gap of at least this
WIDE = 6  # the step reads at most this many times the users of smallest gap it starts from
SPARSE_REACH = 10.0  # how far (in theta) the first load reaches along a sparse arc across groups (3:
# refills on nearly tight levels, where the linear model is least sure; 16: loads more than it saves)
SECOND_GAP = 0.07  # the pass's second gap costs it about as much as reading this share of the users' rows
# (all four move test_bench_solvers on the "tight" and "fighting" families)

# ---- phase 4, the repair's heaps -----------------------------------------------------------------------
FIRST_LOAD_MIN = 16.0  # the first heap load is this many times the warm prices' imbalance at 1M users,
FIRST_LOAD_MAX = 48.0  # growing with sqrt(n) up to this from 9M users on (a refill scans a whole node,
# which costs more the more users there are; the first load costs in proportion to itself)
FIRST_LOAD_USERS = 4096  # and at least this many users; moves test_bench_transport (repair_s)
REFILL_SAMPLE = 4096  # users of a node whose keys set a refill's thresholds
FEW_FUNDS = 4  # empty funds that best_values reads the grid once for each (more: one read for all)

# ---- the distributed solve (eoca.distributed.solve) -----------------------------------------------------
GATHER_MIN = 200_000  # users near a price boundary gathered first, at least
GATHER_PER_EXCESS = 32  # ... or this many per unit of imbalance under the warm prices
GAP_SAMPLE = 2_000_000  # gaps returned by pass A to choose the gather threshold
SURPLUS_SLACK = 1000  # users beyond twice a fund's surplus that its own threshold gathers
GROWTH = 4  # the gather threshold's quantile grows by this factor per verify round
PRE_GATHER = 0.08  # share of the users (at least 2 x GATHER_MIN) that pass A already returns: those of smallest
# gap under the warm prices, by the warm-start sample's gaps. When they cover the threshold chosen after
# pass A (at 10M-50M users it selects 3-5%), the first round's gathering pass B is not run: one read of
# the grid fewer (10 s of 50 s at 50M users), for a transfer of 8% of the grid's rows to the client
# (all six move test_bench_distributed: gathered users and rounds)

# ---- side constraints (eoca.solvers._side_exact): the restricted LP over users near the price boundary ----
SIDE_ROWS = 1 << 18  # users whose priced grid is built at once
SIDE_SAMPLE = 5000  # users of the random sample whose LP gives the warm prices and multipliers (0.9 s at 1M)
SIDE_FIRST = 4096  # least users in a working set
SIDE_SHARE = 0.005  # share of the users in a working set (5,000 at 1M): every restricted LP costs about
# 0.15 s per 1,000 users there (HiGHS's interior point with crossover)
SIDE_ROUNDS = 50  # restricted-LP rounds before giving up (1M users, 6 constraints: 4)
SIDE_BOX = 0.1  # half-width of the first box step around a multiplier, as a share of it (1M x 8, 6
# constraints: with 0.5 or no box 19,000 fixed users broke after the first LP, with 0.1 8,500)
SIDE_BOX_FLOOR = 1e-3  # least half-width: this share of the largest ETV per typical coefficient
SIDE_SHRINK_ROUNDS = 8  # rounds whose working set may shrink back (1M: LPs of 12,400 -> 6,800 -> 5,000 users
# instead of 13,500 -> 15,500 -> 15,500, 11 s instead of 17 s); past them it only grows, so the rounds end
SIDE_SETTLE = 200  # least users re-solved by the settlement MIP besides the fractional ones
SIDE_SETTLE_SMALL = 16  # users of smallest gap the MIP re-solves besides the fractional ones after the smoothed
# dual's settling LP (the LP leaves few fractional users; a MIP over 300 users costs HiGHS about a second; 1M x 8,
# six rules: 32 -> 16 users took the MIP from ~0.2 s to a few hundredths, certified gap 7.7e-11 -> 4.3e-10)
SIDE_SETTLE_MAX = 50_000  # users of the settling LP at most (it grows 4x while it has no solution)
SIDE_SETTLE_GAP = 1e-7  # share of the LP optimum by which the settlement MIP may stop short of its optimum
# (all move benchmarks/test_bench_side.py: time against the plain solve, working users, gap)

# ---- side constraints at scale (eoca.solvers._side_dual): Newton's method on the smoothed dual ------------
DUAL_USERS = 100_000  # from this many users the prices come from the smoothed dual, below from restricted LPs
DUAL_BLOCKS = 64  # blocks of users of the step kernel (a fixed split: sums never depend on the threads)
DUAL_HESSIAN_USERS = 20_000  # about this many unsettled users (a stride of them) give each step's Hessian
DUAL_SAMPLE = 50_000  # users of the random sample the first stages run on, at most ...
DUAL_SAMPLE_SHARE = 0.05  # ... and at most this share of the users, but at least DUAL_SAMPLE_MIN (six rules, side
DUAL_SAMPLE_MIN = 5_000  # by side: 200k users 0.71-0.87 -> 0.56 s with 10,000; 1M: 20,000 1.5 s against 50,000 1.2 s)
DUAL_SAMPLE_ITERS = 12  # Newton steps per sample stage before it is given up (demands widened, then a cold start; 1M x 8: 3-6 needed)
DUAL_SCALE_USERS = 2_000  # users whose mean ETV sets the smoothing's scale
DUAL_TAU_START = 0.1  # first smoothing, as a share of the mean ETV
DUAL_TAU_SAMPLE = 1e-2  # the sample's stages run down to this smoothing
DUAL_TAU_STEP = 8.0  # the smoothing falls by this factor per stage (6 rules, side by side: 1M 1.9 -> 1.4 s against
# 4, one stage fewer on every user; 10M 12.7 -> 11.3 s; 200k 0.60 -> 0.63 s; 16: 1M 2.9 s)
DUAL_ITERS = 30  # Newton steps per stage at most
DUAL_PRECISION = 1e-9  # stop once the smoothing adds at most this share to the dual bound
DUAL_TAU_FREEZE = 1e-3  # below this smoothing (share of the mean ETV) users of large gap are frozen
DUAL_FREEZE = 100.0  # users whose best option leads by more than this many tau are frozen at it
DUAL_ACTIVE = 0.05  # ... or, where more, this share of the users of smallest gap stay free
DUAL_MIN_ACTIVE = 2_000  # least users the Newton steps read
DUAL_GATHER = 0.5  # more users than this share free: the steps read every user in place (never gathered)
DUAL_PASSES = 400  # Newton steps in all before the restricted LPs take over (1M x 8: 25)
DUAL_FREEZES = 20  # freezes before giving up (1M x 8, 6 constraints: 2)
