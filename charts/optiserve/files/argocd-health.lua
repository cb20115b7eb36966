-- Argo CD health check for optiserve.io/OptimizedModel.
-- Healthy:     phase Promoted, the operator has observed the current generation, and Ready is not
--              False (the baseline's pods serve the promoted model).
-- Progressing: no status yet, a generation not yet observed, phase Pending, Optimizing,
--              Validating, Deploying or Canary, or Promoted while the baseline's pods start.
-- Degraded:    phase Failed or RolledBack, or a Degraded condition that is True for this generation.
local hs = {status = "Progressing", message = "Waiting for the operator to report status"}
local status = obj.status
if status == nil or status.phase == nil then
  return hs
end

local generation = obj.metadata.generation
local observed = status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local function describe(default)
  if status.message ~= nil and status.message ~= "" then
    return status.phase .. ": " .. status.message
  end
  return status.phase .. ": " .. default
end

local not_ready = nil
if status.conditions ~= nil then
  for _, condition in ipairs(status.conditions) do
    local current = condition.observedGeneration == nil or generation == nil or condition.observedGeneration >= generation
    if condition.type == "Degraded" and condition.status == "True" and current then
      hs.status = "Degraded"
      hs.message = describe(condition.message or condition.reason or "degraded")
      return hs
    end
    if condition.type == "Ready" and condition.status == "False" and current then
      not_ready = condition
    end
  end
end

local phase = status.phase
if phase == "Promoted" and not_ready ~= nil then
  hs.status = "Progressing"
  hs.message = phase .. ": " .. (not_ready.message or not_ready.reason or "waiting for the baseline to serve")
elseif phase == "Promoted" then
  hs.status = "Healthy"
  hs.message = describe("the optimized model serves all traffic")
elseif phase == "Failed" or phase == "RolledBack" then
  hs.status = "Degraded"
  hs.message = describe("see the OptimizedModel's conditions and events")
elseif phase == "Pending" or phase == "Optimizing" or phase == "Validating" or phase == "Deploying" or phase == "Canary" then
  hs.status = "Progressing"
  hs.message = describe("in progress")
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. tostring(phase)
end
return hs
