"""memrl's own ManiSkill 3 touch tasks: variants of MIKASA-Robo's colour and shell-game tasks, built
from primitive shapes (nothing is downloaded). They differ from MIKASA-Robo (whose tasks are in
`envs.maniskill.mikasa`) on purpose: end-effector control, one 64 x 64 camera, a touch decides at
once (a wrong one fails), sparse +-1 rewards, and the shell game swaps its cups; hence their own
names (memrl/Touch...-v0, short names maniskill-touch-...).

A Panda arm (end-effector position control, `pd_ee_delta_pos`: 4 actions in [-1, 1]) stands on a
checkered floor in front of a 3 x 3 grid of slots 10 cm apart. Every task shows something, hides
it, and then asks the agent to touch the right object; the answer is never in the observation.
Objects are kinematic primitives, one actor per colour (or cup), built in every parallel scene;
an object is hidden by parking it under the floor, where the camera cannot see it. A touch is the
gripper's tool centre point (TCP) inside an object's box widened by `TOUCH_MARGIN`, counted in the
choice phase only.

    TouchRememberColor-N (N = 3, 5, 9; 60 steps): a cube of one of N colours is shown for 5 steps,
        then nothing for 5 steps, then all N colours appear at random grid slots; touching the
        shown colour is a success, touching another one a failure. Chance 1/N.
    TouchShellGameSwap (90 steps): a red ball lies on one of three slots for 5 steps; three identical
        cups then cover the slots (the ball is hidden) for 5 steps and swap places twice in view
        (5 steps a swap); touching the cup with the ball is a success, another cup a failure.
        Chance 1/3 (an agent can also keep the answer with its gripper, by following the cup).
    TouchSeqOfColors-K / TouchChainOfColors-K (K = 3, 5, 7; 120 steps): K distinct colours of 9 are shown
        one after another (5 steps each), then nothing for 5 steps, then all 9 colours appear at
        random grid slots. Touch every shown colour (SeqOfColors: in any order; ChainOfColors: in
        the order shown); a touched cube disappears; touching any other cube is a failure.

Observations are ManiSkill's: with obs_mode="rgb", the 64 x 64 RGB image of a camera in front of
the robot ("base_camera") plus the agent's joint positions and velocities and the TCP pose;
obs_mode="state" gives the proprioception alone. `evaluate()` returns success, fail and the
touches; rewards: "sparse" +1 success / -1 failure, "dense" adds a small reaching term (towards
the right object, choice phase only), "normalized_dense" is dense / 1.1. The hidden answer lives
in tensors of the task (`target`, `sequence`), never in an observation.
"""

from __future__ import annotations

import numpy as np
import sapien
import torch
from mani_skill.agents.robots import Panda
from mani_skill.envs.sapien_env import BaseEnv
from mani_skill.sensors.camera import CameraConfig
from mani_skill.utils import sapien_utils
from mani_skill.utils.building.ground import build_ground
from mani_skill.utils.registration import register_env
from mani_skill.utils.structs import Pose
from mani_skill.utils.structs.types import GPUMemoryConfig, SimConfig

PALETTE = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.75, 0.10),
    "blue": (0.10, 0.20, 0.90),
    "yellow": (0.95, 0.85, 0.10),
    "magenta": (0.85, 0.10, 0.85),
    "cyan": (0.10, 0.85, 0.85),
    "orange": (1.00, 0.50, 0.00),
    "black": (0.05, 0.05, 0.05),
    "white": (0.95, 0.95, 0.95),
}
"""The colours of the colour tasks; a task with N colours uses the first N."""

GRID_SLOTS = torch.tensor([[x, y] for x in (-0.1, 0.0, 0.1) for y in (-0.1, 0.0, 0.1)])
"""xy of the 9 slots where objects appear in the choice phase (the robot base is at x = -0.615)."""
SHOW_SPOT = (0.0, 0.0)
"""xy where the colour tasks show the colour to remember."""
PARKED_X, PARKED_SPACING, PARKED_Z = 2.0, 0.2, -1.0
"""Hidden objects wait in a row under the floor, out of the camera's sight."""
TOUCH_MARGIN = (0.015, 0.03)
"""A touch: the TCP within an object's box widened by 1.5 cm sideways and raised by 3 cm on top."""
PHASE_STEPS = 5
"""Steps each colour (or the ball) is shown, of the blank delay, and of one cup swap."""
ROBOT_BASE = (-0.615, 0.0, 0.0)
REST_QPOS = (0.0, np.pi / 8, 0.0, -np.pi * 5 / 8, 0.0, np.pi * 3 / 4, np.pi / 4, 0.04, 0.04)
REWARD_SCALE = 1.1
"""The largest dense reward of one step (success 1 plus reaching 0.1), for normalized_dense."""


class MemoryTouchEnv(BaseEnv):
    """What the three task families share: robot, floor, camera, parked objects, touch detection.

    A task defines `_object_specs()` (the actors), `_allocate_state()` and `_draw_episodes(env_idx)`
    (its hidden per-env state), `_object_positions(step, env_idx)` (where every object is at the
    given step of each env in `env_idx`, [len(env_idx), num_objects, 3], parked or not),
    `_choice_start` (the first step of the choice phase) and `_judge(touched)` -> (success, fail,
    reach_target [num_envs, 3]) from the objects touched at this step. `info` carries `touched` and
    `reach_target` (where the right object is) for rewards and tests; observations never do."""

    SUPPORTED_ROBOTS = ("panda",)
    SUPPORTED_REWARD_MODES = ("sparse", "dense", "normalized_dense", "none")
    agent: Panda
    _choice_start: int

    def __init__(self, *args, robot_uids="panda", robot_init_qpos_noise=0.02, control_mode="pd_ee_delta_pos",
                 reward_mode="sparse", **kwargs):
        self.robot_init_qpos_noise = robot_init_qpos_noise
        super().__init__(*args, robot_uids=robot_uids, control_mode=control_mode, reward_mode=reward_mode, **kwargs)

    # -- scene ----------------------------------------------------------------------------

    @property
    def _default_sim_config(self):
        # ManiSkill's tabletop tasks' GPU buffers: thousands of scenes with contacts overflow the defaults.
        memory = GPUMemoryConfig(found_lost_pairs_capacity=2**25, max_rigid_patch_count=2**18)
        return SimConfig(gpu_memory_config=memory)

    @property
    def _default_sensor_configs(self):
        # Frames the grid (about 30 x 24 pixels of 64 x 64, a cube 5 pixels wide) and the gripper above it.
        pose = sapien_utils.look_at(eye=[0.3, 0.0, 0.45], target=[-0.02, 0.0, 0.02])
        return [CameraConfig("base_camera", pose=pose, width=64, height=64, fov=1.0, near=0.01, far=10)]

    @property
    def _default_human_render_camera_configs(self):
        pose = sapien_utils.look_at([0.6, 0.7, 0.6], [0.0, 0.0, 0.1])
        return CameraConfig("render_camera", pose=pose, width=512, height=512, fov=1, near=0.01, far=10)

    def _load_agent(self, options: dict):
        super()._load_agent(options, sapien.Pose(p=list(ROBOT_BASE)))

    def _load_scene(self, options: dict):
        build_ground(self.scene)
        self.objects = []
        for index, (name, shape, size, color) in enumerate(self._object_specs()):
            builder = self.scene.create_actor_builder()
            add_collision, add_visual = (
                (builder.add_box_collision, builder.add_box_visual) if shape == "box"
                else (builder.add_sphere_collision, builder.add_sphere_visual)
            )
            size_argument = {"half_size": size} if shape == "box" else {"radius": size[0]}
            add_collision(**size_argument)
            if self.scene.can_render():  # a render material needs a renderer, which render_backend="none" lacks
                add_visual(**size_argument, material=sapien.render.RenderMaterial(base_color=[*color, 1.0]))
            builder.initial_pose = sapien.Pose(p=[PARKED_X + PARKED_SPACING * index, 0.0, PARKED_Z])
            self.objects.append(builder.build_kinematic(name=name))
        parked = [[PARKED_X + PARKED_SPACING * index, 0.0, PARKED_Z] for index in range(len(self.objects))]
        self.parked_positions = torch.tensor(parked, device=self.device)
        self.object_half_sizes = torch.tensor([size for _, _, size, _ in self._object_specs()], device=self.device)
        self.grid_slots = GRID_SLOTS.to(self.device)
        self.show_spot = torch.tensor(SHOW_SPOT, device=self.device)
        self._allocate_state()

    def _object_specs(self) -> list[tuple[str, str, tuple[float, float, float], tuple[float, float, float]]]:
        """(name, "box" or "sphere", half sizes (radius repeated for a sphere), rgb) per object."""
        raise NotImplementedError

    # -- episodes -------------------------------------------------------------------------

    def _initialize_episode(self, env_idx: torch.Tensor, options: dict):
        with torch.device(self.device):
            count = len(env_idx)
            qpos = torch.tensor(REST_QPOS, dtype=torch.float32).repeat(count, 1)
            qpos[:, :7] += self.robot_init_qpos_noise * torch.randn(count, 7)
            self.agent.reset(qpos)
            self.agent.robot.set_pose(sapien.Pose(p=list(ROBOT_BASE)))
            self._draw_episodes(env_idx)
            self._place_objects(torch.zeros(count, dtype=torch.long), env_idx)

    def _allocate_state(self) -> None:
        """Create the task's per-env state tensors ([num_envs, ...] on self.device)."""
        raise NotImplementedError

    def _draw_episodes(self, env_idx: torch.Tensor) -> None:
        raise NotImplementedError

    def _object_positions(self, step: torch.Tensor, env_idx: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _judge(self, touched: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _place_objects(self, step: torch.Tensor, env_idx: torch.Tensor) -> None:
        positions = self._object_positions(step, env_idx)
        for index, actor in enumerate(self.objects):
            actor.set_pose(Pose.create_from_pq(p=positions[:, index]))

    def _before_control_step(self):
        # Objects move with the phase: place them where they are at the step being entered.
        every_env = torch.arange(self.num_envs, device=self.device)
        self._place_objects(self.elapsed_steps.long() + 1, every_env)
        if self.gpu_sim_enabled:
            self.scene._gpu_apply_all()

    def _parked(self, count: int) -> torch.Tensor:
        """Parked positions of every object, [count, num_objects, 3]."""
        return self.parked_positions.expand(count, -1, -1).clone()

    def _on_floor(self, xy: torch.Tensor, object_index: int) -> torch.Tensor:
        """[..., 2] xy -> [..., 3] positions of object `object_index` resting on the floor."""
        z = self.object_half_sizes[object_index, 2].expand(xy.shape[:-1])
        return torch.cat([xy, z[..., None]], dim=-1)

    # -- success, observation, reward -----------------------------------------------------

    def touched_objects(self) -> torch.Tensor:
        """bool [num_envs, num_objects]: the TCP touches the object and the choice phase is on."""
        every_env = torch.arange(self.num_envs, device=self.device)
        positions = self._object_positions(self.elapsed_steps.long(), every_env)
        offset = self.agent.tcp.pose.p[:, None, :] - positions
        side, top = TOUCH_MARGIN
        inside_xy = (offset[..., :2].abs() <= self.object_half_sizes[:, :2] + side).all(-1)
        half_height = self.object_half_sizes[:, 2]
        inside_z = (offset[..., 2] >= -half_height) & (offset[..., 2] <= half_height + top)
        choosing = (self.elapsed_steps >= self._choice_start)[:, None]
        return inside_xy & inside_z & choosing

    def evaluate(self):
        touched = self.touched_objects()
        success, fail, reach_target = self._judge(touched)
        return {"success": success, "fail": fail, "touched": touched, "reach_target": reach_target}

    def _get_obs_extra(self, info: dict):
        return {"tcp_pose": self.agent.tcp.pose.raw_pose}

    def compute_dense_reward(self, obs, action, info):
        distance = torch.linalg.norm(self.agent.tcp.pose.p - info["reach_target"], dim=-1)
        choosing = self.elapsed_steps >= self._choice_start
        reaching = 0.1 * (1 - torch.tanh(5 * distance)) * choosing
        return info["success"].float() - info["fail"].float() + reaching

    def compute_normalized_dense_reward(self, obs, action, info):
        return self.compute_dense_reward(obs, action, info) / REWARD_SCALE


def _random_permutations(count: int, size: int, device: torch.device) -> torch.Tensor:
    """[count, size]: an independent uniform permutation of range(size) per row."""
    return torch.rand(count, size, device=device).argsort(dim=-1)


class RememberColorEnv(MemoryTouchEnv):
    """Remember the colour of the cube shown first; touch the cube of that colour (module docstring)."""

    CUBE_HALF_SIZE = 0.02

    def __init__(self, *args, num_colors: int = 3, **kwargs):
        if not 2 <= num_colors <= len(PALETTE):
            raise ValueError(f"num_colors must be in [2, {len(PALETTE)}], got {num_colors}")
        self.num_colors = num_colors
        self._choice_start = 2 * PHASE_STEPS
        super().__init__(*args, **kwargs)

    def _object_specs(self):
        half = (self.CUBE_HALF_SIZE,) * 3
        return [(f"cube_{name}", "box", half, rgb) for name, rgb in list(PALETTE.items())[: self.num_colors]]

    def _allocate_state(self):
        self.target = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        self.slots = torch.zeros(self.num_envs, self.num_colors, dtype=torch.long, device=self.device)

    def _draw_episodes(self, env_idx):
        self.target[env_idx] = torch.randint(self.num_colors, (len(env_idx),), device=self.device)
        self.slots[env_idx] = _random_permutations(len(env_idx), len(GRID_SLOTS), self.device)[:, : self.num_colors]

    def _object_positions(self, step, env_idx):
        count = len(env_idx)
        positions = self._parked(count)
        rows = torch.arange(count, device=self.device)
        target = self.target[env_idx]
        show = self.show_spot.expand(count, 2)
        showing = step < PHASE_STEPS
        positions[rows, target] = torch.where(showing[:, None], self._on_floor(show, 0), positions[rows, target])
        on_grid = self._on_floor(self.grid_slots[self.slots[env_idx]], 0)
        return torch.where((step >= self._choice_start)[:, None, None], on_grid, positions)

    def _judge(self, touched):
        is_target = torch.nn.functional.one_hot(self.target, self.num_colors).bool()
        success = (touched & is_target).any(-1)
        fail = (touched & ~is_target).any(-1) & ~success
        reach_target = self._on_floor(self.grid_slots[self.slots.gather(1, self.target[:, None])[:, 0]], 0)
        return success, fail, reach_target


class ShellGameTouchEnv(MemoryTouchEnv):
    """A ball is hidden under one of three cups, the cups swap places; touch the ball's cup (module docstring)."""

    BALL_RADIUS = 0.02
    CUP_HALF_SIZE = (0.03, 0.03, 0.04)
    CUP_SLOTS = torch.tensor([[0.0, -0.12], [0.0, 0.0], [0.0, 0.12]])
    SWAP_DETOUR = 0.08
    """The two swapping cups pass each other this far in front of and behind the row."""

    def __init__(self, *args, num_swaps: int = 2, **kwargs):
        if num_swaps < 0:
            raise ValueError(f"num_swaps must be 0 or more, got {num_swaps}")
        self.num_swaps = num_swaps
        self._choice_start = PHASE_STEPS * (2 + num_swaps)
        super().__init__(*args, **kwargs)

    def _object_specs(self):
        ball = ("ball", "sphere", (self.BALL_RADIUS,) * 3, PALETTE["red"])
        return [ball] + [(f"cup_{index}", "box", self.CUP_HALF_SIZE, (0.45, 0.45, 0.5)) for index in range(3)]

    def _allocate_state(self):
        self.cup_slots = self.CUP_SLOTS.to(self.device)
        self.target = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        self.swaps = torch.zeros(self.num_envs, self.num_swaps, 2, dtype=torch.long, device=self.device)

    def _draw_episodes(self, env_idx):
        count = len(env_idx)
        self.target[env_idx] = torch.randint(3, (count,), device=self.device)
        self.swaps[env_idx] = torch.rand(count, self.num_swaps, 3, device=self.device).argsort(-1)[..., :2]

    @property
    def ball_slot(self) -> torch.Tensor:
        """Where the ball's cup ends up after the swaps, long [num_envs] (0, 1, 2 along y)."""
        return self._cup_slots(self.swaps)[torch.arange(self.num_envs, device=self.device), self.target]

    @staticmethod
    def _cup_slots(swaps: torch.Tensor) -> torch.Tensor:
        """[count, 3]: the slot of every cup after all `swaps` [count, k, 2] (pairs of slots)."""
        slots = torch.arange(3, device=swaps.device).expand(swaps.shape[0], 3).clone()
        for index in range(swaps.shape[1]):
            first, second = swaps[:, index, :1], swaps[:, index, 1:]
            slots = torch.where(slots == first, second, torch.where(slots == second, first, slots))
        return slots

    def _object_positions(self, step, env_idx):
        count = len(env_idx)
        rows = torch.arange(count, device=self.device)
        positions = self._parked(count)
        cup_slots = self.cup_slots
        ball = self._on_floor(cup_slots[self.target[env_idx]], 0)
        positions[:, 0] = torch.where((step < PHASE_STEPS)[:, None], ball, positions[:, 0])
        # Slots of the cups before the swap under way, and how far that swap has gone (0..1); the
        # cups rest on the slots for one phase before the first swap.
        swaps = self.swaps[env_idx]
        swap_time = step - 2 * PHASE_STEPS
        swap_index = (swap_time // PHASE_STEPS).clamp(0, self.num_swaps)
        done_swaps = torch.arange(self.num_swaps, device=self.device) < swap_index[:, None]
        slots = self._cup_slots(torch.where(done_swaps[..., None], swaps, 0))  # swapping slot 0 with itself is a no-op
        xy = cup_slots[slots]
        if self.num_swaps > 0:
            moving = swaps[rows, swap_index.clamp(max=self.num_swaps - 1)]
            swapping = (swap_time >= 0) & (swap_index < self.num_swaps)
            progress = torch.where(swapping, (swap_time % PHASE_STEPS + 1).float() / PHASE_STEPS, 0.0)
            for end, other, detour in ((0, 1, self.SWAP_DETOUR), (1, 0, -self.SWAP_DETOUR)):
                cup_moving = slots == moving[:, end : end + 1]
                start_xy, goal_xy = cup_slots[moving[:, end]], cup_slots[moving[:, other]]
                along = start_xy + (goal_xy - start_xy) * progress[:, None]
                along[:, 0] += detour * torch.sin(torch.pi * progress)
                xy = torch.where(cup_moving[..., None], along[:, None, :], xy)
        cups = torch.cat([xy, self.object_half_sizes[1:, 2].expand(count, 3)[..., None]], dim=-1)
        positions[:, 1:] = torch.where((step >= PHASE_STEPS)[:, None, None], cups, positions[:, 1:])
        return positions

    def _judge(self, touched):
        cups = touched[:, 1:]
        is_ball_cup = torch.nn.functional.one_hot(self.target, 3).bool()
        success = (cups & is_ball_cup).any(-1)
        fail = (cups & ~is_ball_cup).any(-1) & ~success
        reach_target = self._on_floor(self.cup_slots[self.ball_slot], 1)
        return success, fail, reach_target


class ColorSequenceEnv(MemoryTouchEnv):
    """K colours shown one after another; touch them all (`ordered`: in the order shown). See the module docstring."""

    CUBE_HALF_SIZE = 0.02

    def __init__(self, *args, sequence_length: int = 3, ordered: bool = False, **kwargs):
        if not 1 <= sequence_length <= len(PALETTE):
            raise ValueError(f"sequence_length must be in [1, {len(PALETTE)}], got {sequence_length}")
        self.sequence_length = sequence_length
        self.ordered = ordered
        self._choice_start = PHASE_STEPS * (sequence_length + 1)
        super().__init__(*args, **kwargs)

    def _object_specs(self):
        half = (self.CUBE_HALF_SIZE,) * 3
        return [(f"cube_{name}", "box", half, rgb) for name, rgb in PALETTE.items()]

    def _allocate_state(self):
        self.sequence = torch.zeros(self.num_envs, self.sequence_length, dtype=torch.long, device=self.device)
        self.slots = torch.zeros(self.num_envs, len(PALETTE), dtype=torch.long, device=self.device)
        self.collected = torch.zeros(self.num_envs, len(PALETTE), dtype=torch.bool, device=self.device)

    def _draw_episodes(self, env_idx):
        count = len(env_idx)
        self.sequence[env_idx] = _random_permutations(count, len(PALETTE), self.device)[:, : self.sequence_length]
        self.slots[env_idx] = _random_permutations(count, len(GRID_SLOTS), self.device)
        self.collected[env_idx] = False

    def _object_positions(self, step, env_idx):
        count = len(env_idx)
        rows = torch.arange(count, device=self.device)
        positions = self._parked(count)
        shown_index = (step // PHASE_STEPS).clamp(max=self.sequence_length - 1)
        shown = self.sequence[env_idx][rows, shown_index]
        show = self._on_floor(self.show_spot.expand(count, 2), 0)
        showing = step < PHASE_STEPS * self.sequence_length
        positions[rows, shown] = torch.where(showing[:, None], show, positions[rows, shown])
        on_grid = self._on_floor(self.grid_slots[self.slots[env_idx]], 0)
        on_grid = torch.where(self.collected[env_idx][..., None], self._parked(count), on_grid)
        return torch.where((step >= self._choice_start)[:, None, None], on_grid, positions)

    def _next_color(self) -> torch.Tensor:
        """long [num_envs]: the colour ChainOfColors expects next."""
        rows = torch.arange(self.num_envs, device=self.device)
        return self.sequence[rows, self.collected.sum(-1).clamp(max=self.sequence_length - 1)]

    def _judge(self, touched):
        touched = touched & ~self.collected  # a cube touched at this step is parked from the next one on
        in_sequence = torch.zeros_like(self.collected).scatter_(1, self.sequence, True)
        if self.ordered:
            allowed = torch.nn.functional.one_hot(self._next_color(), len(PALETTE)).bool()
        else:
            allowed = in_sequence & ~self.collected
        self.collected |= touched & allowed
        fail = (touched & ~allowed).any(-1)
        remaining = in_sequence & ~self.collected
        success = ~remaining.any(-1)
        aim = self._next_color() if self.ordered else remaining.float().argmax(-1)
        rows = torch.arange(self.num_envs, device=self.device)
        reach_target = self._on_floor(self.grid_slots[self.slots[rows, aim]], 0)
        return success, fail, reach_target


REMEMBER_COLOR_STEPS, SHELL_GAME_STEPS, COLOR_SEQUENCE_STEPS = 60, 90, 120

for _count in (3, 5, 9):
    register_env(f"memrl/TouchRememberColor{_count}-v0", max_episode_steps=REMEMBER_COLOR_STEPS,
                 num_colors=_count)(RememberColorEnv)
register_env("memrl/TouchShellGameSwap-v0", max_episode_steps=SHELL_GAME_STEPS)(ShellGameTouchEnv)
for _count in (3, 5, 7):
    register_env(f"memrl/TouchSeqOfColors{_count}-v0", max_episode_steps=COLOR_SEQUENCE_STEPS,
                 sequence_length=_count)(ColorSequenceEnv)
    register_env(f"memrl/TouchChainOfColors{_count}-v0", max_episode_steps=COLOR_SEQUENCE_STEPS,
                 sequence_length=_count, ordered=True)(ColorSequenceEnv)
