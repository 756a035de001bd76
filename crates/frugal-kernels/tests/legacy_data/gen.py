import struct, random, math
random.seed(12345)
blocks = []
def add(b):
    assert len(b) == 32
    blocks.append([float(x) for x in b])
# ties for q8 (d = 1): amax 127
add([127.0] + [k + 0.5 for k in range(-15, 16)])
add([-127.0] + [-(k + 0.5) for k in range(0, 31)])
# ties for q4_0: max = -8 -> d = 1, id = 1
add([-8.0] + [k + 0.5 for k in range(-8, 7)] + [k for k in range(-8, 8)])
# q5_0: max = -16
add([-16.0] + [k + 0.5 for k in range(-16, 15)])
# q4_1: min 0, max 15 -> d = 1
add([0.0, 15.0] + [k * 0.5 for k in range(30)])
# q5_1: min 0, max 31
add([0.0, 31.0] + [k + 0.5 for k in range(30)])
add([0.0] * 32)
add([-1.0] * 32)
add([2.5] * 32)
add([-x * 0.37 - 0.01 for x in range(32)])
add([3.0, -3.0] + [1.0] * 30)
add([-3.0, 3.0] + [1.0] * 30)
add([1e30, -1e30] + [random.uniform(-1e30, 1e30) for _ in range(30)])
add([1e-7 * random.uniform(-1, 1) for _ in range(32)])
add([6e-5 * random.uniform(-1, 1) for _ in range(32)])
add([65504.0 * 127 * random.uniform(-1, 1) for _ in range(31)] + [65504.0 * 127])
add([random.choice([-1.0, 1.0]) * 127.0 * random.random() for _ in range(32)])
add([0.0] * 31 + [-0.0])
add([0.0] * 31 + [1e-3])
# values near .5 boundaries after scaling by an inexact id
add([127.0 / 3] + [(k + 0.5) / 3 for k in range(-15, 16)])
while len(blocks) < 96:
    kind = random.randrange(4)
    s = 10 ** random.uniform(-3, 3)
    if kind == 0:
        add([random.gauss(0, s) for _ in range(32)])
    elif kind == 1:
        add([random.uniform(-s, s) for _ in range(32)])
    elif kind == 2:
        add([random.uniform(0, s) + s for _ in range(32)])
    else:
        add([round(random.gauss(0, 8)) * s / 8 + s / 16 for _ in range(32)])
with open('input.f32', 'wb') as f:
    for b in blocks:
        f.write(struct.pack('<32f', *b))
print(len(blocks))
