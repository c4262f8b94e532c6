"""Run MIKASA-Robo's own task files beside memrl's rebuilds and compare them, on the CPU without a renderer.

    git clone https://github.com/CognitiveAISystems/MIKASA-Robo /tmp/MIKASA-Robo
    python scripts/compare_mikasa.py --mikasa /tmp/MIKASA-Robo
    python scripts/compare_mikasa.py --mikasa /tmp/MIKASA-Robo --output benchmarks/mikasa_side_by_side.md

Both run on mani-skill's CPU simulation with the state observation and the `panda` robot (the
camera robot needs a renderer). The original task files build render materials unconditionally,
so this script makes SAPIEN's visual-shape calls no-ops before importing them: collision shapes
and physics are untouched. The ShellGame tasks are left out (they need YCB's mug, a download).

Two checks:
- spaces: episode length, action shape, state size and default reward mode of every other task;
- same scene: both tasks are put into one state (robot joints, object poses, hidden answer) and
  stepped with the same actions; the normalised dense rewards and success flags must agree to
  1e-4 at every step.
Exit code 1 if anything differs except memrl's Rotate state vector, which carries the target angle
(`prompt`) that MIKASA-Robo passes beside it (one number more: deliberate, in the README).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import math
import shlex
import subprocess
import sys
import types
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

ORIGINAL_MODULES = ("remember_color", "remember_shape", "remember_shape_and_color", "bunch_of_colors",
                    "seq_of_colors", "chain_of_colors", "intercept", "intercept_grab", "rotate_lenient",
                    "rotate_strict", "take_it_back")
TASKS = ([f"RememberColor{n}-v0" for n in (3, 5, 9)] + [f"RememberShape{n}-v0" for n in (3, 5, 9)]
         + [f"RememberShapeAndColor{level}-v0" for level in ("3x2", "3x3", "5x3")]
         + [f"{family}OfColors{n}-v0" for family in ("Bunch", "Seq", "Chain") for n in (3, 5, 7)]
         + [f"Intercept{grab}{speed}-v0" for grab in ("", "Grab") for speed in ("Slow", "Medium", "Fast")]
         + [f"Rotate{rule}{targets}-v0" for rule in ("Lenient", "Strict") for targets in ("Pos", "PosNeg")]
         + ["TakeItBack-v0"])
PROMPT_IN_STATE = {task for task in TASKS if task.startswith("Rotate")}
TOLERANCE = 1e-4


def load_original(mikasa_dir: Path) -> None:
    """Import MIKASA-Robo's task modules (registering their ids) with SAPIEN's visuals switched off."""
    import sapien
    import sapien.wrapper.actor_builder as actor_builder
    import sapien.wrapper.urdf_loader as urdf_loader

    class NoMaterial:
        def __init__(self, *args, **kwargs):
            pass

    for name in ("add_box_visual", "add_cylinder_visual", "add_sphere_visual", "add_capsule_visual",
                 "add_visual_from_file"):
        setattr(actor_builder.ActorBuilder, name, lambda self, *args, **kwargs: self)
    sapien.render.RenderMaterial = NoMaterial
    urdf_loader.RenderMaterial = NoMaterial
    # The package's __init__ also imports the ShellGame tasks; only the modules compared here are loaded.
    for package, folder in (("mikasa_robo_suite", ""), ("mikasa_robo_suite.memory_envs", "memory_envs")):
        module = types.ModuleType(package)
        module.__path__ = [str(mikasa_dir / "mikasa_robo_suite" / folder)]
        sys.modules[package] = module
    for name in ORIGINAL_MODULES:
        importlib.import_module(f"mikasa_robo_suite.memory_envs.{name}")


def make(env_id: str):
    import gymnasium

    env = gymnasium.make(env_id, num_envs=1, obs_mode="state", render_backend="none", sim_backend="physx_cpu",
                         robot_uids="panda", control_mode="pd_joint_delta_pos")
    env.reset(seed=0)
    return env


def compare_spaces() -> tuple[list[str], bool]:
    import torch
    from mani_skill.utils.registration import REGISTERED_ENVS

    lines = ["| task | original: T, actions, state size, reward mode | memrl | same? |", "|---|---|---|---|"]
    all_same = True
    for task in TASKS:
        facts = []
        for env_id in (task, f"memrl/{task}"):
            env = make(env_id)
            obs, *_ = env.step(torch.zeros(1, 8))
            facts.append((REGISTERED_ENVS[env_id].max_episode_steps, tuple(env.action_space.shape), obs.shape[-1],
                          env.unwrapped.reward_mode))
            env.close()
        original, mine = facts
        if original == mine:
            verdict = "yes"
        elif task in PROMPT_IN_STATE and mine == (*original[:2], original[2] + 1, original[3]):
            verdict = "yes, + prompt"
        else:
            verdict, all_same = "**no**", False
        lines.append(f"| {task} | {original} | {mine} | {verdict} |")
    return lines, all_same


class Pair:
    """The original and memrl's version of one task, driven together."""

    START = (0.0, 0.3, 0.0, -2.0, 0.0, 2.3, math.pi / 4, 0.04, 0.04)

    def __init__(self, task: str):
        self.original, self.mine = make(task), make(f"memrl/{task}")
        self.envs = (self.original, self.mine)

    def hold(self, steps: int, gripper: float = 0.0) -> list[tuple[float, bool]]:
        import torch

        action = torch.zeros(1, 8)
        action[0, 7] = gripper
        for _ in range(steps):
            results = [env.step(action) for env in self.envs]
        return [(float(result[1][0]), bool(result[4]["success"][0])) for result in results]

    def same_robot(self) -> None:
        import torch

        for env in self.envs:
            agent = env.unwrapped.agent
            agent.robot.set_qpos(torch.tensor([self.START]))
            agent.robot.set_qvel(torch.zeros(1, 9))
            agent.controller.reset()

    def close(self) -> None:
        for env in self.envs:
            env.close()


def put(actor, position, quaternion=(1.0, 0.0, 0.0, 0.0), velocity=(0.0, 0.0, 0.0)) -> None:
    import torch

    state = torch.zeros(1, 13)
    state[0, :3], state[0, 3:7], state[0, 7:10] = torch.tensor(position), torch.tensor(quaternion), torch.tensor(velocity)
    actor.set_state(state)


def scene_remember_color(offset):
    """RememberColor3 at step 12: the same cube places and answer, the TCP `offset` from the answer."""
    import torch

    pair = Pair("RememberColor3-v0")
    pair.hold(11)
    pair.same_robot()
    pair.hold(1)
    pair.same_robot()
    tcp = pair.mine.unwrapped.agent.tcp.pose.p[0]
    places = [[0.0, 0.1, 0.02], [0.0, 0.0, 0.02], (tcp + torch.tensor(offset)).tolist()]
    pair.original.unwrapped.true_color_indices[:] = 2
    pair.mine.unwrapped.target[:] = 2
    for index, place in enumerate(places):
        put(pair.original.unwrapped.cubes[index], place)
        put(pair.mine.unwrapped.objects[index], place)
    return pair, [pair.hold(1)]


def scene_rotate(task, turn_error, shift):
    """The same peg, start heading (1 rad) and target (0.7 rad), turned to within `turn_error`, moved by `shift`."""
    import torch

    pair = Pair(task)
    pair.hold(6)
    original, mine = pair.original.unwrapped, pair.mine.unwrapped
    start, heading, target = [0.05, -0.03, 0.025], 1.0, 0.7
    original.initial_rotations[:] = heading
    mine.initial_heading[:] = heading
    original.target_angle = torch.tensor([target], dtype=torch.float16)
    mine.target_angle[:] = torch.tensor([target]).half().float()
    if hasattr(original, "initial_peg_position"):
        original.initial_peg_position = torch.tensor([start])
    mine.initial_position[:] = torch.tensor([start])
    turned = heading + target - turn_error
    pair.same_robot()
    for peg in (original.peg, mine.peg):
        put(peg, [start[0] + shift, start[1], start[2]], (math.cos(turned / 2), 0.0, 0.0, math.sin(turned / 2)))
    return pair, [pair.hold(1)]


def scene_colour_set(task, touches):
    """The same shown colours (0, 1, 2) and cube places; `touches`, one cube brought under the TCP per step."""
    import torch

    pair = Pair(task)
    pair.hold(21)
    original, mine = pair.original.unwrapped, pair.mine.unwrapped
    original.true_color_indices[:] = torch.tensor([[0, 1, 2]], dtype=torch.uint8)
    mine.sequence[:] = torch.tensor([[0, 1, 2]])
    places = [[0.05 * (index % 3) - 0.05, 0.1 * (index // 3) - 0.1, 0.02] for index in range(9)]
    cubes = ([original.cubes[index] for index in range(9)], mine.objects)
    pair.same_robot()
    for env_cubes in cubes:
        for index, cube in enumerate(env_cubes):
            put(cube, places[index])
    steps = []
    for touched in touches:
        for env, env_cubes in zip(pair.envs, cubes):
            tcp = env.unwrapped.agent.tcp.pose.p[0]
            put(env_cubes[touched], (tcp - torch.tensor([0.0, 0.0, 0.025])).tolist())
        steps.append(pair.hold(1))
        for env_cubes in cubes:
            put(env_cubes[touched], places[touched])
    return pair, steps


def scene_intercept():
    """InterceptMedium: the same ball (place, velocity) and goal, the arm still for 10 steps."""
    import torch
    from mani_skill.utils.structs.pose import Pose

    pair = Pair("InterceptMedium-v0")
    pair.same_robot()
    for env in pair.envs:
        put(env.unwrapped.ball, [-0.2, -0.8, 0.04], velocity=(0.02, 0.6, 0.0))
    goal = torch.tensor([[0.0, 0.1, 1e-3]])
    pair.original.unwrapped.goal_region.set_pose(Pose.create_from_pq(p=goal))
    pair.mine.unwrapped.goal[:] = goal
    return pair, [pair.hold(1) for _ in range(10)]


def scene_intercept_grab():
    """InterceptGrabMedium: the ball held between the closing fingers for 4 steps, then 4 more steps."""
    pair = Pair("InterceptGrabMedium-v0")
    pair.same_robot()
    steps = []
    for step in range(8):
        if step < 4:
            for env in pair.envs:
                put(env.unwrapped.ball, env.unwrapped.agent.tcp.pose.p[0].tolist())
        steps.append(pair.hold(1, gripper=-1.0))
    return pair, steps


def scene_take_it_back():
    """TakeItBack: the same start and goal; the cube halfway, in the goal, halfway back, home."""
    import torch
    from mani_skill.utils.structs.pose import Pose

    pair = Pair("TakeItBack-v0")
    original, mine = pair.original.unwrapped, pair.mine.unwrapped
    start, goal = torch.tensor([[0.0, 0.1, 1e-3]]), torch.tensor([[0.22, 0.0, 1e-3]])
    original.initial_region.set_pose(Pose.create_from_pq(p=start))
    original.goal_region.set_pose(Pose.create_from_pq(p=goal))
    mine.start[:], mine.goal[:] = start, goal
    steps = []
    for place in ([0.1, 0.05, 0.02], [0.22, 0.0, 0.02], [0.1, 0.05, 0.02], [0.02, 0.1, 0.02]):
        pair.same_robot()
        put(original.cube, place)
        put(mine.cube, place)
        steps.append(pair.hold(1))
    return pair, steps


SCENES = [
    ("RememberColor3, TCP on the answer", lambda: scene_remember_color([0.0, 0.0, -0.03])),
    ("RememberColor3, TCP 6 cm away", lambda: scene_remember_color([0.0, 0.06, -0.03])),
    ("RememberColor3, TCP 19 cm away", lambda: scene_remember_color([0.15, 0.1, -0.05])),
    ("RotateLenientPos, turned by the target", lambda: scene_rotate("RotateLenientPos-v0", 0.0, 0.0)),
    ("RotateLenientPos, 0.3 rad short", lambda: scene_rotate("RotateLenientPos-v0", 0.3, 0.0)),
    ("RotateLenientPos, turned, moved 8 cm", lambda: scene_rotate("RotateLenientPos-v0", 0.05, 0.08)),
    ("RotateStrictPos, turned by the target", lambda: scene_rotate("RotateStrictPos-v0", 0.0, 0.0)),
    ("RotateStrictPos, 0.3 rad short", lambda: scene_rotate("RotateStrictPos-v0", 0.3, 0.0)),
    ("RotateStrictPos, turned, moved 8 cm", lambda: scene_rotate("RotateStrictPos-v0", 0.05, 0.08)),
    ("SeqOfColors3, touches 2, 0, 1", lambda: scene_colour_set("SeqOfColors3-v0", [2, 0, 1])),
    ("SeqOfColors3, touches 5 (wrong), 0, 1, 2", lambda: scene_colour_set("SeqOfColors3-v0", [5, 0, 1, 2])),
    ("ChainOfColors3, touches 0, 1, 2", lambda: scene_colour_set("ChainOfColors3-v0", [0, 1, 2])),
    ("ChainOfColors3, touches 0, 2, 1", lambda: scene_colour_set("ChainOfColors3-v0", [0, 2, 1])),
    ("BunchOfColors3, touches 1, 2, 0", lambda: scene_colour_set("BunchOfColors3-v0", [1, 2, 0])),
    ("InterceptMedium, ball rolling, arm still", scene_intercept),
    ("InterceptGrabMedium, ball grasped", scene_intercept_grab),
    ("TakeItBack, goal then home", scene_take_it_back),
]


def compare_scenes() -> tuple[list[str], bool]:
    lines = ["| scene | steps | rewards, original | rewards, memrl | success (original / memrl) | same? |",
             "|---|---:|---|---|---|---|"]
    all_same = True
    for name, scene in SCENES:
        pair, steps = scene()
        pair.close()
        same = all(abs(original[0] - mine[0]) <= TOLERANCE and original[1] == mine[1] for original, mine in steps)
        all_same &= same
        rewards = [", ".join(f"{step[index][0]:.4f}" for step in steps) for index in (0, 1)]
        successes = " ".join(f"{int(step[0][1])}/{int(step[1][1])}" for step in steps)
        lines.append(f"| {name} | {len(steps)} | {rewards[0]} | {rewards[1]} | {successes} | "
                     f"{'yes' if same else '**no**'} |")
    return lines, all_same


def original_commit(mikasa_dir: Path) -> str:
    try:
        result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=mikasa_dir, capture_output=True, text=True,
                                check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return result.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mikasa", type=Path, required=True, help="a checkout of CognitiveAISystems/MIKASA-Robo")
    parser.add_argument("--output", type=Path, help="write the markdown report here (atomically)")
    args = parser.parse_args(argv)
    if not (args.mikasa / "mikasa_robo_suite" / "memory_envs").is_dir():
        parser.exit(2, f"compare_mikasa: error: {args.mikasa} is not a MIKASA-Robo checkout "
                       "(no mikasa_robo_suite/memory_envs in it)\n")
    warnings.filterwarnings("ignore")
    load_original(args.mikasa)
    import mani_skill
    import torch

    import envs.maniskill.mikasa  # noqa: F401  (registers memrl's ids)
    from scripts.bench_envs import git_commit

    torch.manual_seed(0)
    space_lines, spaces_same = compare_spaces()
    scene_lines, scenes_same = compare_scenes()
    report = "\n".join([
        "# MIKASA-Robo side by side: the original task files and memrl's rebuilds",
        "",
        f"- date: {datetime.date.today().isoformat()}, memrl commit {git_commit()}, mani-skill {mani_skill.__version__},"
        f" torch {torch.__version__}, CPU simulation, state observation, robot `panda`",
        f"- original: MIKASA-Robo commit {original_commit(args.mikasa)} (ShellGame left out: it needs YCB's mug)",
        f"- command: `{shlex.join(['python', 'scripts/compare_mikasa.py', *(argv if argv is not None else sys.argv[1:])])}`",
        "",
        "## Spaces", "", *space_lines, "",
        "## Same scene, same actions: normalised dense reward and success per step", "", *scene_lines, "",
    ])
    print(report)
    if args.output is not None:
        temporary = args.output.with_suffix(args.output.suffix + ".tmp")
        temporary.write_text(report)
        temporary.replace(args.output)
    return 0 if spaces_same and scenes_same else 1


if __name__ == "__main__":
    sys.exit(main())
