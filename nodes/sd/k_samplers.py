"""Samplers over an explicit list of noise levels (sigmas), as ComfyUI's k-diffusion samplers step.

Each sampler takes a model function `model(x, sigma) -> denoised` (the clean estimate of the latent `x` at noise
level `sigma`, CFG and masks applied; nodes/sd/custom_sampling.py builds it from a MODEL and a guider), the
starting latent, the sigmas (ending at 0 for a full denoise) and a callback per step, and returns the last latent.
The algorithms are written from their papers and k-diffusion's published formulas; ComfyUI's choices that change
results are kept: the noise of ancestral steps comes from a CPU generator seeded with seed + 1, the SDE samplers
(dpmpp_sde, dpmpp_2m_sde, dpmpp_3m_sde) draw from a Brownian tree seeded with the seed, and on flow-matching
models (`model.flow`) the ancestral samplers take their rectified-flow forms and the SDE samplers step in half
log-SNR. The `_gpu` names are the same maths: ComfyUI draws their Brownian tree on the GPU, here it is the CPU tree
(the same numbers on every device).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import torch

NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, torch.Tensor, torch.Tensor], None]  # (step index, x, denoised)


class KModel(Protocol):
    """The model function a sampler calls: the clean estimate of `x` at `sigma`."""

    flow: bool  # flow matching: x = sigma * noise + (1 - sigma) * x0
    uncond_denoised: torch.Tensor | None  # the unconditional clean estimate of the last call (CFG++ samplers)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor: ...

    def noise_scaling(self, sigma: torch.Tensor, noise: torch.Tensor, latent: torch.Tensor) -> torch.Tensor: ...

    def percent_to_sigma(self, percent: float) -> float: ...


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE derivative dx/dsigma."""
    return (x - denoised) / sigma


def ancestral_step(sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float = 1.0,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma_down, sigma_up): the level a deterministic step goes down to and the noise added back."""
    if not eta:
        return sigma_to, torch.zeros_like(sigma_to)
    sigma_up = torch.minimum(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    return (sigma_to**2 - sigma_up**2) ** 0.5, sigma_up


def gaussian_noise(x: torch.Tensor, seed: int) -> NoiseSampler:
    """Fresh normal noise per call from one CPU generator seeded with seed + 1 (ComfyUI's CPU default)."""
    generator = torch.Generator("cpu").manual_seed(seed + 1)

    def draw(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)

    return draw


def brownian_noise(x: torch.Tensor, sigmas: torch.Tensor, seed: int) -> NoiseSampler:
    """Brownian-motion increments over sigma from a torchsde BrownianTree seeded with `seed`, normalised to unit
    variance (ComfyUI's BrownianTreeNoiseSampler): the noise of an SDE step does not depend on the step count."""
    import torchsde

    positive = sigmas[sigmas > 0]
    lo, hi = positive.min().detach().cpu().float(), sigmas.max().detach().cpu().float()
    tree = torchsde.BrownianTree(lo, torch.zeros(x.shape, dtype=torch.float32), hi, entropy=seed)

    def draw(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        a, b = sigma.detach().cpu().float(), sigma_next.detach().cpu().float()
        sign = 1.0 if a < b else -1.0
        t0, t1 = (a, b) if a < b else (b, a)
        w = tree(t0, t1) * sign  # the increment from the lower level to the upper one, oriented like the call
        return (w / (t1 - t0).abs().sqrt()).to(x.device, x.dtype)

    return draw


def half_log_snr(sigma: torch.Tensor, flow: bool) -> torch.Tensor:
    """log(alpha / sigma): -log sigma for x0 + sigma * noise, log((1 - sigma) / sigma) for flow matching."""
    return sigma.logit().neg() if flow else sigma.log().neg()


def sigma_of_half_log_snr(value: torch.Tensor, flow: bool) -> torch.Tensor:
    return value.neg().sigmoid() if flow else value.neg().exp()


def _offset_first_sigma(model: KModel, sigmas: torch.Tensor) -> torch.Tensor:
    """A flow schedule starting at sigma 1 has an infinite log-SNR there: start just below it."""
    if model.flow and len(sigmas) > 1 and sigmas[0] >= 1:
        sigmas = sigmas.clone()
        sigmas[0] = model.percent_to_sigma(1e-4)
    return sigmas


def sample_euler(model: KModel, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback, seed: int,
                 ) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        callback(i, x, denoised)
        x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
    return x


def sample_euler_ancestral(model: KModel, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback, seed: int,
                           eta: float = 1.0, s_noise: float = 1.0) -> torch.Tensor:
    noise = gaussian_noise(x, seed)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        callback(i, x, denoised)
        if model.flow:
            x = _rf_ancestral(x, denoised, sigmas[i], sigmas[i + 1], eta, s_noise, noise)
            continue
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        if sigma_down == 0:
            x = denoised
        else:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _rf_down(sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rectified flow's ancestral split: (sigma_down, renoise coefficient)."""
    sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)
    alpha_next, alpha_down = 1 - sigma_next, 1 - sigma_down
    return sigma_down, (sigma_next**2 - sigma_down**2 * alpha_next**2 / alpha_down**2) ** 0.5


def _rf_ancestral(x: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
                  eta: float, s_noise: float, noise: NoiseSampler) -> torch.Tensor:
    if sigma_next == 0:
        return denoised
    sigma_down, renoise = _rf_down(sigma, sigma_next, eta)
    ratio = sigma_down / sigma
    x = ratio * x + (1 - ratio) * denoised
    if eta > 0:
        x = ((1 - sigma_next) / (1 - sigma_down)) * x + noise(sigma, sigma_next) * s_noise * renoise
    return x


def sample_heun(model: KModel, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback, seed: int,
                ) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        callback(i, x, denoised)
        d = to_d(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1]))
            x = x + (d + d_2) / 2 * dt
    return x


def sample_heunpp2(model: KModel, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback, seed: int,
                   ) -> torch.Tensor:
    """Heun++: a third evaluation two levels ahead, the derivatives weighted by level (sd-webui-samplers-scheduler)."""
    s_end = sigmas[-1]
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        callback(i, x, denoised)
        d = to_d(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == s_end:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1]))
        if sigmas[i + 2] == s_end:
            w2 = sigmas[i + 1] / (2 * sigmas[0])
            x = x + (d * (1 - w2) + d_2 * w2) * dt
        else:
            x_3 = x_2 + d_2 * (sigmas[i + 2] - sigmas[i + 1])
            d_3 = to_d(x_3, sigmas[i + 2], model(x_3, sigmas[i + 2]))
            w2, w3 = sigmas[i + 1] / (3 * sigmas[0]), sigmas[i + 2] / (3 * sigmas[0])
            x = x + ((1 - w2 - w3) * d + w2 * d_2 + w3 * d_3) * dt
    return x


def sample_dpm_2(model: KModel, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback, seed: int,
                 ) -> torch.Tensor:
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        callback(i, x, denoised)
        d = to_d(x, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid))
            x = x + d_2 * (sigmas[i + 1] - sigmas[i])
    return x


def sample_dpm_2_ancestral(model: KModel, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback, seed: int,
                           eta: float = 1.0, s_noise: float = 1.0) -> torch.Tensor:
    noise = gaussian_noise(x, seed)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        callback(i, x, denoised)
        if model.flow:
            sigma_down, renoise = _rf_down(sigmas[i], sigmas[i + 1], eta)
        else:
            sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
            continue
        sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
        x_2 = x + d * (sigma_mid - sigmas[i])
        d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid))
        x = x + d_2 * (sigma_down - sigmas[i])
        if model.flow:
            x = ((1 - sigmas[i + 1]) / (1 - sigma_down)) * x + noise(sigmas[i], sigmas[i + 1]) * s_noise * renoise
        else:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _lms_coefficient(order: int, t: list[float], i: int, j: int) -> float:
    """The integral over [t_i, t_i+1] of the j-th Lagrange basis polynomial through the last `order` levels."""
    from scipy import integrate

    def basis(tau: float) -> float:
        prod = 1.0
        for k in range(order):
            if j != k:
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    return integrate.quad(basis, t[i], t[i + 1], epsrel=1e-4)[0]


def sample_lms(model: KModel, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback, seed: int,
               order: int = 4) -> torch.Tensor:
    levels = sigmas.detach().cpu().double().tolist()
    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        callback(i, x, denoised)
        ds.append(to_d(x, sigmas[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            current = min(i + 1, order)
            coefficients = [_lms_coefficient(current, levels, i, j) for j in range(current)]
            x = x + sum(c * d for c, d in zip(coefficients, reversed(ds)))
    return x


def sample_dpmpp_2s_ancestral(model: KModel, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback, seed: int,
                              eta: float = 1.0, s_noise: float = 1.0) -> torch.Tensor:
    """DPM-Solver++(2S) with ancestral noise (Lu et al. 2022); the rectified-flow form on flow models."""
    noise = gaussian_noise(x, seed)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        callback(i, x, denoised)
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if model.flow:
            sigma_down, renoise = _rf_down(sigma, sigma_next, eta)
            if sigma_next == 0:
                x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
            else:
                if sigma == 1.0:
                    sigma_s = torch.full_like(sigma, 0.9999)
                else:
                    lam, lam_down = ((1 - sigma) / sigma).log(), ((1 - sigma_down) / sigma_down).log()
                    sigma_s = ((lam + (lam_down - lam) / 2).exp() + 1) ** -1
                u = (sigma_s / sigma) * x + (1 - sigma_s / sigma) * denoised
                denoised_2 = model(u, sigma_s)
                x = (sigma_down / sigma) * x + (1 - sigma_down / sigma) * denoised_2
            if sigma_next > 0 and eta > 0:
                x = ((1 - sigma_next) / (1 - sigma_down)) * x + noise(sigma, sigma_next) * s_noise * renoise
            continue
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        if sigma_down == 0:
            x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        else:
            t, t_next = sigma.log().neg(), sigma_down.log().neg()
            h = t_next - t
            s = t + h / 2
            x_2 = (s.neg().exp() / t.neg().exp()) * x - (-h / 2).expm1() * denoised
            denoised_2 = model(x_2, s.neg().exp())
            x = (t_next.neg().exp() / t.neg().exp()) * x - (-h).expm1() * denoised_2
        if sigma_next > 0:
            x = x + noise(sigma, sigma_next) * s_noise * sigma_up
    return x


def sample_dpmpp_sde(model: KModel, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback, seed: int,
                     eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5) -> torch.Tensor:
    """DPM-Solver++ (stochastic, two evaluations per step), in half log-SNR."""
    if len(sigmas) <= 1:
        return x
    noise = brownian_noise(x, sigmas, seed)
    sigmas = _offset_first_sigma(model, sigmas)
    flow = model.flow
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        callback(i, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lambda_s, lambda_t = half_log_snr(sigmas[i], flow), half_log_snr(sigmas[i + 1], flow)
        h = lambda_t - lambda_s
        lambda_s_1 = lambda_s + r * h
        fac = 1 / (2 * r)
        sigma_s_1 = sigma_of_half_log_snr(lambda_s_1, flow)
        alpha_s = sigmas[i] * lambda_s.exp()
        alpha_s_1 = sigma_s_1 * lambda_s_1.exp()
        alpha_t = sigmas[i + 1] * lambda_t.exp()
        sd, su = ancestral_step(lambda_s.neg().exp(), lambda_s_1.neg().exp(), eta)
        h_ = sd.log().neg() - lambda_s
        x_2 = (alpha_s_1 / alpha_s) * (-h_).exp() * x - alpha_s_1 * (-h_).expm1() * denoised
        if eta > 0 and s_noise > 0:
            x_2 = x_2 + alpha_s_1 * noise(sigmas[i], sigma_s_1) * s_noise * su
        denoised_2 = model(x_2, sigma_s_1)
        sd, su = ancestral_step(lambda_s.neg().exp(), lambda_t.neg().exp(), eta)
        h_ = sd.log().neg() - lambda_s
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (alpha_t / alpha_s) * (-h_).exp() * x - alpha_t * (-h_).expm1() * denoised_d
        if eta > 0 and s_noise > 0:
            x = x + alpha_t * noise(sigmas[i], sigmas[i + 1]) * s_noise * su
    return x


def sample_dpmpp_2m(model: KModel, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback, seed: int,
                    ) -> torch.Tensor:
    """DPM-Solver++(2M): second order from the previous step's estimate."""
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        callback(i, x, denoised)
        t, t_next = sigmas[i].log().neg(), sigmas[i + 1].log().neg()
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * denoised
        else:
            r = (t - sigmas[i - 1].log().neg()) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


def sample_dpmpp_2m_sde(model: KModel, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback, seed: int,
                        eta: float = 1.0, s_noise: float = 1.0, solver_type: str = "midpoint") -> torch.Tensor:
    return _dpmpp_multistep_sde(model, x, sigmas, callback, seed, eta, s_noise, 2, solver_type)


def sample_dpmpp_2m_sde_heun(model: KModel, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback, seed: int,
                             eta: float = 1.0, s_noise: float = 1.0) -> torch.Tensor:
    return _dpmpp_multistep_sde(model, x, sigmas, callback, seed, eta, s_noise, 2, "heun")


def sample_dpmpp_3m_sde(model: KModel, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback, seed: int,
                        eta: float = 1.0, s_noise: float = 1.0) -> torch.Tensor:
    return _dpmpp_multistep_sde(model, x, sigmas, callback, seed, eta, s_noise, 3, "midpoint")


def _dpmpp_multistep_sde(model: KModel, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback, seed: int,
                         eta: float, s_noise: float, order: int, solver_type: str) -> torch.Tensor:
    """DPM-Solver++(2M/3M) SDE in half log-SNR, the noise from a Brownian tree."""
    if len(sigmas) <= 1:
        return x
    if solver_type not in ("heun", "midpoint"):
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    noise = brownian_noise(x, sigmas, seed)
    sigmas = _offset_first_sigma(model, sigmas)
    denoised_1 = denoised_2 = None
    h = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        callback(i, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lambda_s, lambda_t = half_log_snr(sigmas[i], model.flow), half_log_snr(sigmas[i + 1], model.flow)
            h = lambda_t - lambda_s
            h_eta = h * (eta + 1)
            alpha_t = sigmas[i + 1] * lambda_t.exp()
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            if order == 3 and h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + (alpha_t * phi_2) * d1 - (alpha_t * phi_3) * d2
            elif h_1 is not None:
                r = h_1 / h
                if order == 3 or solver_type == "heun":
                    phi_2 = h_eta.neg().expm1() / h_eta + 1
                    x = x + alpha_t * phi_2 * (1 / r) * (denoised - denoised_1)
                else:
                    x = x + 0.5 * alpha_t * (-h_eta).expm1().neg() * (1 / r) * (denoised - denoised_1)
            if eta > 0 and s_noise > 0:
                x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


def sample_ddpm(model: KModel, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback, seed: int,
                ) -> torch.Tensor:
    """DDPM's ancestral step (Ho et al. 2020) on the variance-preserving latent x / sqrt(1 + sigma^2)."""
    noise = gaussian_noise(x, seed)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        callback(i, x, denoised)
        sigma, sigma_prev = sigmas[i], sigmas[i + 1]
        eps = (x - denoised) / sigma
        vp = x / torch.sqrt(1.0 + sigma**2)
        alpha_cumprod, alpha_cumprod_prev = 1 / (sigma**2 + 1), 1 / (sigma_prev**2 + 1)
        alpha = alpha_cumprod / alpha_cumprod_prev
        mu = (1.0 / alpha).sqrt() * (vp - (1 - alpha) * eps / (1 - alpha_cumprod).sqrt())
        if sigma_prev > 0:
            mu = mu + ((1 - alpha) * (1.0 - alpha_cumprod_prev) / (1.0 - alpha_cumprod)).sqrt() * noise(sigma,
                                                                                                          sigma_prev)
            mu = mu * torch.sqrt(1.0 + sigma_prev**2)
        x = mu
    return x


def sample_lcm(model: KModel, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback, seed: int,
               ) -> torch.Tensor:
    """Latent consistency: jump to the clean estimate, re-noise to the next level."""
    noise = gaussian_noise(x, seed)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        callback(i, x, denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = model.noise_scaling(sigmas[i + 1], noise(sigmas[i], sigmas[i + 1]), x)
    return x


_IPNDM = {1: [1.0], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}


def sample_ipndm(model: KModel, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback, seed: int,
                 max_order: int = 4) -> torch.Tensor:
    """Improved pseudo linear multistep (Zhang & Chen 2023): Adams-Bashforth weights on the last derivatives."""
    history: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        callback(i, x, denoised)
        d = (x - denoised) / sigmas[i]
        order = min(max_order, i + 1)
        if sigmas[i + 1] == 0:
            x_next = denoised
        else:
            ds = [d, *reversed(history[-(order - 1):])] if order > 1 else [d]
            x_next = x + (sigmas[i + 1] - sigmas[i]) * sum(w * v for w, v in zip(_IPNDM[order], ds))
        history = [*history, d][-(max_order - 1):]
        x = x_next
    return x


def sample_ipndm_v(model: KModel, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback, seed: int,
                   max_order: int = 4) -> torch.Tensor:
    """iPNDM with variable step sizes: the multistep weights follow the actual level spacing."""
    t = sigmas
    history: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        callback(i, x, denoised)
        d = (x - denoised) / sigmas[i]
        order = min(max_order, i + 1)
        h = t[i + 1] - t[i]
        if t[i + 1] == 0:
            x_next = denoised
        elif order == 1:
            x_next = x + h * d
        else:
            h1 = t[i] - t[i - 1]
            if order == 2:
                c = [(2 + h / h1) / 2, -(h / h1) / 2]
            else:
                h2 = t[i - 1] - t[i - 2]
                temp1 = (1 - h / (3 * (h + h1)) * (h * (h + h1)) / (h1 * (h1 + h2))) / 2
                if order == 3:
                    c = [(2 + h / h1) / 2 + temp1, -(h / h1) / 2 - (1 + h1 / h2) * temp1, temp1 * h1 / h2]
                else:
                    h3 = t[i - 2] - t[i - 3]
                    ratio = h1 * (h1 + h2) / (h2 * (h2 + h3))
                    temp2 = ((1 - h / (3 * (h + h1))) / 2 + (1 - h / (2 * (h + h1))) * h / (6 * (h + h1 + h2))) \
                        * (h * (h + h1) * (h + h1 + h2)) / (h1 * (h1 + h2) * (h1 + h2 + h3))
                    c = [(2 + h / h1) / 2 + temp1 + temp2,
                         -(h / h1) / 2 - (1 + h1 / h2) * temp1 - (1 + h1 / h2 + ratio) * temp2,
                         temp1 * h1 / h2 + (h1 / h2 + ratio * (1 + h2 / h3)) * temp2,
                         -temp2 * ratio * h1 / h2]
            ds = [d, *reversed(history[-(order - 1):])]
            x_next = x + h * sum(w * v for w, v in zip(c, ds))
        history = [*history, d][-(max_order - 1):]
        x = x_next
    return x


def sample_euler_ancestral_cfg_pp(model: KModel, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback,
                                  seed: int, eta: float = 1.0, s_noise: float = 1.0) -> torch.Tensor:
    """CFG++ (Chung et al. 2024): the step re-noises along the unconditional estimate's direction. A flow schedule
    starting at sigma 1 starts just below it (ComfyUI divides by its zero alpha there and returns NaN)."""
    noise = gaussian_noise(x, seed)
    sigmas = _offset_first_sigma(model, sigmas)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        uncond = model.uncond_denoised if model.uncond_denoised is not None else denoised
        callback(i, x, denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        alpha_s = sigmas[i] * half_log_snr(sigmas[i], model.flow).exp()
        alpha_t = sigmas[i + 1] * half_log_snr(sigmas[i + 1], model.flow).exp()
        d = to_d(x, sigmas[i], alpha_s * uncond)
        sigma_down, sigma_up = ancestral_step(sigmas[i] / alpha_s, sigmas[i + 1] / alpha_t, eta)
        x = alpha_t * denoised + alpha_t * sigma_down * d
        if eta > 0 and s_noise > 0:
            x = x + alpha_t * noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def sample_euler_cfg_pp(model: KModel, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback, seed: int,
                        ) -> torch.Tensor:
    return sample_euler_ancestral_cfg_pp(model, x, sigmas, callback, seed, eta=0.0, s_noise=0.0)


def sample_dpmpp_2m_cfg_pp(model: KModel, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback, seed: int,
                           ) -> torch.Tensor:
    old_uncond = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        uncond = model.uncond_denoised if model.uncond_denoised is not None else denoised
        callback(i, x, denoised)
        t, t_next = sigmas[i].log().neg(), sigmas[i + 1].log().neg()
        h = t_next - t
        if old_uncond is None or sigmas[i + 1] == 0:
            mix = -torch.exp(-h) * uncond
        else:
            r = (t - sigmas[i - 1].log().neg()) / h
            mix = -torch.exp(-h) * uncond - torch.expm1(-h) * (1 / (2 * r)) * (denoised - old_uncond)
        x = denoised + mix + torch.exp(-h) * x
        old_uncond = uncond
    return x


def _res_multistep(model: KModel, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback, seed: int,
                   eta: float, s_noise: float, cfg_pp: bool) -> torch.Tensor:
    """RES second-order multistep (Zhang et al. 2023, arXiv 2308.02157) with optional ancestral noise."""
    noise = gaussian_noise(x, seed)
    old_sigma_down = old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        uncond = model.uncond_denoised if cfg_pp and model.uncond_denoised is not None else denoised
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        callback(i, x, denoised)
        if sigma_down == 0 or old_denoised is None:
            if cfg_pp:
                x = denoised + to_d(x, sigmas[i], uncond) * sigma_down
            else:
                x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_old = sigmas[i].log().neg(), old_sigma_down.log().neg()
            t_next, t_prev = sigma_down.log().neg(), sigmas[i - 1].log().neg()
            h = t_next - t
            c2 = (t_prev - t_old) / h
            phi1 = torch.expm1(-h) / -h
            phi2 = (phi1 - 1.0) / -h
            b1 = torch.nan_to_num(phi1 - phi2 / c2, nan=0.0)
            b2 = torch.nan_to_num(phi2 / c2, nan=0.0)
            if cfg_pp:
                x = x + (denoised - uncond)
                x = (-h).exp() * x + h * (b1 * uncond + b2 * old_denoised)
            else:
                x = (-h).exp() * x + h * (b1 * denoised + b2 * old_denoised)
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        old_denoised = uncond if cfg_pp else denoised
        old_sigma_down = sigma_down
    return x


def sample_res_multistep(model: KModel, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback, seed: int,
                         ) -> torch.Tensor:
    return _res_multistep(model, x, sigmas, callback, seed, 0.0, 1.0, False)


def sample_res_multistep_cfg_pp(model: KModel, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback,
                                seed: int) -> torch.Tensor:
    return _res_multistep(model, x, sigmas, callback, seed, 0.0, 1.0, True)


def sample_res_multistep_ancestral(model: KModel, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback,
                                   seed: int, eta: float = 1.0, s_noise: float = 1.0) -> torch.Tensor:
    return _res_multistep(model, x, sigmas, callback, seed, eta, s_noise, False)


def sample_res_multistep_ancestral_cfg_pp(model: KModel, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback,
                                          seed: int, eta: float = 1.0, s_noise: float = 1.0) -> torch.Tensor:
    return _res_multistep(model, x, sigmas, callback, seed, eta, s_noise, True)


def sample_gradient_estimation(model: KModel, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback, seed: int,
                               ge_gamma: float = 2.0) -> torch.Tensor:
    """Euler with the derivative extrapolated from the previous one (Permenter & Yuan, gradient estimation)."""
    old_d = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        d = to_d(x, sigmas[i], denoised)
        callback(i, x, denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x = x + d * dt
            if old_d is not None:
                x = x + (ge_gamma - 1) * (d - old_d) * dt
        old_d = d
    return x


class _DpmSolver:
    """DPM-Solver (Lu et al. 2022) in t = -log sigma, orders 1 to 3, with the noise prediction of the model."""

    def __init__(self, model: KModel, callback: Callback) -> None:
        self.model = model
        self.callback = callback

    @staticmethod
    def sigma(t: torch.Tensor) -> torch.Tensor:
        return t.neg().exp()

    @staticmethod
    def t(sigma: torch.Tensor) -> torch.Tensor:
        return sigma.log().neg()

    def eps(self, cache: dict[str, torch.Tensor], key: str, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if key not in cache:
            cache[key] = (x - self.model(x, self.sigma(t))) / self.sigma(t)
        return cache[key]

    def step_1(self, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, cache: dict) -> torch.Tensor:
        h = t_next - t
        return x - self.sigma(t_next) * h.expm1() * self.eps(cache, "eps", x, t)

    def step_2(self, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, cache: dict,
               r1: float = 1 / 2) -> torch.Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        return x - self.sigma(t_next) * h.expm1() * eps - self.sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)

    def step_3(self, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, cache: dict,
               r1: float = 1 / 3, r2: float = 2 / 3) -> torch.Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = (x - self.sigma(s2) * (r2 * h).expm1() * eps
              - self.sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps))
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        return x - self.sigma(t_next) * h.expm1() * eps - self.sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)

    def fast(self, x: torch.Tensor, t_start: torch.Tensor, t_end: torch.Tensor, nfe: int) -> torch.Tensor:
        """Fixed steps spending `nfe` model calls: third-order steps, the last ones of order 2 and 1."""
        m = math.floor(nfe / 3) + 1
        ts = torch.linspace(float(t_start), float(t_end), m + 1, device=x.device)
        orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
        for i, order in enumerate(orders):
            cache: dict[str, torch.Tensor] = {}
            t, t_next = ts[i], ts[i + 1]
            eps = self.eps(cache, "eps", x, t)
            self.callback(i, x, x - self.sigma(t) * eps)
            x = (self.step_1 if order == 1 else self.step_2 if order == 2 else self.step_3)(x, t, t_next, cache)
        return x

    def adaptive(self, x: torch.Tensor, t_start: torch.Tensor, t_end: torch.Tensor, order: int, rtol: float,
                 atol: float, h_init: float, pcoeff: float, icoeff: float, dcoeff: float,
                 accept_safety: float) -> torch.Tensor:
        """Embedded pairs (1/2 or 2/3) with a PID step-size controller on the local error."""
        if order not in (2, 3):
            raise ValueError("order should be 2 or 3")
        b1, b2, b3 = (pcoeff + icoeff + dcoeff) / order, -(pcoeff + 2 * dcoeff) / order, dcoeff / order
        h = abs(h_init)
        errs: list[float] = []
        s, x_prev, steps = t_start, x, 0
        atol_t, rtol_t = torch.tensor(atol), torch.tensor(rtol)
        while s < t_end - 1e-5:
            cache: dict[str, torch.Tensor] = {}
            t = torch.minimum(t_end, s + h)
            eps = self.eps(cache, "eps", x, s)
            if order == 2:
                x_low, x_high = self.step_1(x, s, t, cache), self.step_2(x, s, t, cache)
            else:
                x_low, x_high = self.step_2(x, s, t, cache, r1=1 / 3), self.step_3(x, s, t, cache)
            delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
            error = float(torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5)
            inv = 1 / (error + 1e-8)
            if not errs:
                errs = [inv, inv, inv]
            errs[0] = inv
            factor = 1 + math.atan(errs[0] ** b1 * errs[1] ** b2 * errs[2] ** b3 - 1)
            if factor >= accept_safety:
                errs[2], errs[1] = errs[1], errs[0]
                x_prev, x = x_low, x_high
                self.callback(steps, x, x - self.sigma(s) * eps)
                s = t
                steps += 1
            h *= factor
        return x


def _dpm_bounds(sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    sigma_min = sigmas[-1] if sigmas[-1] > 0 else sigmas[-2]
    return sigmas[0], sigma_min


def sample_dpm_fast(model: KModel, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback, seed: int,
                    ) -> torch.Tensor:
    """DPM-Solver-Fast from the first level to the last nonzero one, in as many model calls as steps."""
    if len(sigmas) <= 1:
        return x
    sigma_max, sigma_min = _dpm_bounds(sigmas)
    solver = _DpmSolver(model, callback)
    return solver.fast(x, solver.t(sigma_max), solver.t(sigma_min), len(sigmas) - 1)


def sample_dpm_adaptive(model: KModel, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback, seed: int,
                        order: int = 3, rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05,
                        pcoeff: float = 0.0, icoeff: float = 1.0, dcoeff: float = 0.0,
                        accept_safety: float = 0.81) -> torch.Tensor:
    """DPM-Solver-12/23 with adaptive step size between the first and the last nonzero level (the steps in
    between are the controller's, not the schedule's)."""
    if len(sigmas) <= 1:
        return x
    sigma_max, sigma_min = _dpm_bounds(sigmas)
    solver = _DpmSolver(model, callback)
    return solver.adaptive(x, solver.t(sigma_max), solver.t(sigma_min), order, rtol, atol, h_init, pcoeff, icoeff,
                           dcoeff, accept_safety)


SamplerFunction = Callable[..., torch.Tensor]

# ComfyUI's names (comfy/samplers.py KSAMPLER_NAMES order, then ddim) -> (function, fixed options). `ddim` is ComfyUI's
# Euler with fresh noise for the masked-out area; `_gpu` variants alias the CPU-tree ones (see the module doc).
K_SAMPLERS: dict[str, tuple[SamplerFunction, dict[str, Any]]] = {
    "euler": (sample_euler, {}),
    "euler_cfg_pp": (sample_euler_cfg_pp, {}),
    "euler_ancestral": (sample_euler_ancestral, {}),
    "euler_ancestral_cfg_pp": (sample_euler_ancestral_cfg_pp, {}),
    "heun": (sample_heun, {}),
    "heunpp2": (sample_heunpp2, {}),
    "dpm_2": (sample_dpm_2, {}),
    "dpm_2_ancestral": (sample_dpm_2_ancestral, {}),
    "lms": (sample_lms, {}),
    "dpm_fast": (sample_dpm_fast, {}),
    "dpm_adaptive": (sample_dpm_adaptive, {}),
    "dpmpp_2s_ancestral": (sample_dpmpp_2s_ancestral, {}),
    "dpmpp_sde": (sample_dpmpp_sde, {}),
    "dpmpp_sde_gpu": (sample_dpmpp_sde, {}),
    "dpmpp_2m": (sample_dpmpp_2m, {}),
    "dpmpp_2m_cfg_pp": (sample_dpmpp_2m_cfg_pp, {}),
    "dpmpp_2m_sde": (sample_dpmpp_2m_sde, {}),
    "dpmpp_2m_sde_gpu": (sample_dpmpp_2m_sde, {}),
    "dpmpp_2m_sde_heun": (sample_dpmpp_2m_sde_heun, {}),
    "dpmpp_2m_sde_heun_gpu": (sample_dpmpp_2m_sde_heun, {}),
    "dpmpp_3m_sde": (sample_dpmpp_3m_sde, {}),
    "dpmpp_3m_sde_gpu": (sample_dpmpp_3m_sde, {}),
    "ddpm": (sample_ddpm, {}),
    "lcm": (sample_lcm, {}),
    "ipndm": (sample_ipndm, {}),
    "ipndm_v": (sample_ipndm_v, {}),
    "res_multistep": (sample_res_multistep, {}),
    "res_multistep_cfg_pp": (sample_res_multistep_cfg_pp, {}),
    "res_multistep_ancestral": (sample_res_multistep_ancestral, {}),
    "res_multistep_ancestral_cfg_pp": (sample_res_multistep_ancestral_cfg_pp, {}),
    "gradient_estimation": (sample_gradient_estimation, {}),
    "ddim": (sample_euler, {}),
}
K_SAMPLER_NAMES = tuple(K_SAMPLERS)
# Samplers that read the unconditional estimate (the model function computes it separately).
CFG_PP = frozenset(n for n in K_SAMPLERS if n.endswith("_cfg_pp"))
# ComfyUI runs these one step longer and drops the next-to-last level, so that the last step (of order 1) is short.
DISCARD_PENULTIMATE_SIGMA = frozenset({"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"})
# ComfyUI's sampler names that neither the diffusers schedulers nor this module run (listed to name them in errors).
NOT_IMPLEMENTED = ("exp_heun_2_x0", "exp_heun_2_x0_sde", "dpmpp_2s_ancestral_cfg_pp", "gradient_estimation_cfg_pp",
                   "er_sde", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece")
