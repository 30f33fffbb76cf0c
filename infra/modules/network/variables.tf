variable "name" {
  description = "Name prefix for every resource of this module (e.g. \"chatty-prod\")."
  type        = string
}

variable "vpc_cidr" {
  description = "IPv4 CIDR block of the VPC. Public subnets get /24s at its start, private subnets /20s after them."
  type        = string
  default     = "10.40.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) <= 16
    error_message = "vpc_cidr must be a valid IPv4 CIDR of size /16 or larger."
  }
}

variable "az_count" {
  description = "Number of availability zones to spread subnets over (2 or 3). The ALB needs at least 2."
  type        = number
  default     = 2

  validation {
    condition     = var.az_count >= 2 && var.az_count <= 3
    error_message = "az_count must be 2 or 3."
  }
}

variable "single_nat_gateway" {
  description = "Use one NAT gateway for all private subnets (cheaper, but egress of every AZ depends on one AZ). false = one NAT gateway per AZ."
  type        = bool
  default     = false
}

variable "tags" {
  description = "Tags added to every resource of this module."
  type        = map(string)
  default     = {}
}
