-- The state table of shared.predictions.status, rendered: a constant per status (STARTING =
-- 'starting', ...) and may_enter(current, target), true exactly when ALLOWED_SOURCES lets a
-- prediction move from current to target. Scripts name statuses only by these constants.
local {{STATUS_NAMES}} = {{STATUS_VALUES}}
local ENTERED_FROM = {{ENTERED_FROM}}
local function may_enter(current, target)
  local sources = ENTERED_FROM[target]
  return sources ~= nil and sources[current] == true
end
