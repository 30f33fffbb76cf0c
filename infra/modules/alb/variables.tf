variable "name" {
  description = "Name prefix for the load balancer and target group (ALB names are limited to 32 characters)."
  type        = string
}

variable "vpc_id" {
  description = "ID of the VPC of the target group."
  type        = string
}

variable "public_subnet_ids" {
  description = "Public subnets (at least two AZs) the ALB is placed in."
  type        = list(string)
}

variable "security_group_id" {
  description = "Security group of the ALB (from the security module)."
  type        = string
}

variable "certificate_arn" {
  description = "ARN of the ACM certificate served by the HTTPS listener."
  type        = string
}

variable "ssl_policy" {
  description = "TLS policy of the HTTPS listener."
  type        = string
  default     = "ELBSecurityPolicy-TLS13-1-2-2021-06"
}

variable "app_port" {
  description = "Container port traffic is forwarded to (server.port)."
  type        = number
  default     = 8080
}

variable "idle_timeout" {
  description = "ALB idle timeout in seconds. Must exceed the server's WebSocket ping interval (25 s) so idle sockets are not cut between pings."
  type        = number
  default     = 120

  validation {
    condition     = var.idle_timeout > 25 && var.idle_timeout <= 4000
    error_message = "idle_timeout must be greater than the 25 s ping interval (and at most 4000)."
  }
}

variable "deregistration_delay" {
  description = "Seconds the ALB keeps a deregistering target's connections before closing them. Longer than the node's drain plus its stop poll (27 s), at or below the ECS stop timeout."
  type        = number
  default     = 35

  validation {
    condition     = var.deregistration_delay >= 0 && var.deregistration_delay <= 3600
    error_message = "deregistration_delay must be between 0 and 3600 seconds."
  }
}

variable "health_check_path" {
  description = "Target group health check path: /readyz answers 200 while the node accepts new sockets and 503 while it drains."
  type        = string
  default     = "/readyz"
}

variable "enable_deletion_protection" {
  description = "Protect the ALB against deletion."
  type        = bool
  default     = true
}

variable "access_logs_bucket" {
  description = "S3 bucket for ALB access logs (bucket policy must allow ELB log delivery). null disables access logs."
  type        = string
  default     = null
}

variable "tags" {
  description = "Tags added to every resource of this module."
  type        = map(string)
  default     = {}
}
